"""Executors run the build's tasks: a local process pool (default) or Ray. Both call the same
task function with the same spec; a task is a pure function of its spec that writes its outputs
atomically and returns a small stats dict."""

from __future__ import annotations

import atexit
import gc
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol

Task = Callable[[Any], dict]


class Executor(Protocol):
    def map_unordered(self, fn: Task, specs: Sequence[Any]) -> Iterator[tuple[Any, dict]]:
        """Run fn(spec) for every spec; yield (spec, result) as tasks finish."""
        ...

    def close(self) -> None: ...


class InlineExecutor:
    """Runs tasks in this process (workers=1): easiest to debug, same results."""

    def map_unordered(self, fn: Task, specs: Sequence[Any]) -> Iterator[tuple[Any, dict]]:
        for s in specs:
            yield s, fn(s)

    def close(self) -> None:
        pass


def fast_exit() -> None:
    """Make this process's exit skip the final garbage collection (`gc.freeze` at exit).

    A process that has loaded numba kernels spends ~0.25 s at exit collecting numba's objects,
    which the OS reclaims anyway; in a pool worker that was ~0.3 s of every multi-worker build,
    waiting in `close`. Objects are still released by reference counting; only the collector's
    walk is skipped. Every task closes its files before it returns."""
    atexit.register(gc.freeze)


class LocalExecutor:
    """A process pool with the spawn start method: numba's OpenMP layer is not fork-safe."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=fast_exit)

    def map_unordered(self, fn: Task, specs: Sequence[Any]) -> Iterator[tuple[Any, dict]]:
        pending = {self._pool.submit(fn, s): s for s in specs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                spec = pending.pop(fut)
                yield spec, fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Ray tasks (retried on worker failure). Connects to `address` or starts a local instance
    bound to 127.0.0.1."""

    def __init__(self, address: str | None = None, workers: int | None = None, max_retries: int = 3):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep listeners on 127.0.0.1
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs.update(num_cpus=workers or os.cpu_count(), _node_ip_address="127.0.0.1")
            ray.init(**kwargs)
        self.max_retries = max_retries

    def map_unordered(self, fn: Task, specs: Sequence[Any]) -> Iterator[tuple[Any, dict]]:
        ray = self._ray
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(fn)
        refs = {remote.remote(s): s for s in specs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                spec = refs.pop(ref)
                yield spec, ray.get(ref)

    def close(self) -> None:
        if self._owned:
            self._ray.shutdown()


def make_executor(kind: str = "local", workers: int = 1, ray_address: str | None = None) -> Executor:
    if kind == "ray":
        return RayExecutor(ray_address, workers)
    if kind != "local":
        raise ValueError(f"--executor must be 'local' or 'ray', got {kind!r}")
    return InlineExecutor() if workers <= 1 else LocalExecutor(workers)
