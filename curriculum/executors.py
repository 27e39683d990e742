"""Executors run the build's tasks: a local process pool (default) or Ray. Both call the same
task function with the same spec; a task is a pure function of its spec that writes its outputs
atomically and returns a small stats dict."""

from __future__ import annotations

import atexit
import gc
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
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


def _init_pool_process(warm: Callable[[], Any] | None) -> None:
    """A pool process's initializer: runs once, before the process takes any task."""
    fast_exit()
    if warm is not None:
        warm()


def _ready() -> int:
    """A probe: it runs in a pool process only after that process's initializer (the warm-up)."""
    return os.getpid()


class LocalExecutor:
    """`workers` at once: this process and `workers - 1` pool processes.

    This process is one of the workers because it is already warm: starting a pool process costs
    ~1.2 s of CPU (interpreter, imports, numba's registries on the first kernel, the tokenizer)
    before it does any work; at two workers that was a quarter of a 40 MB build. This process runs
    its share of the tasks in the thread that iterates over the results (so Ctrl-C stops it at
    once, as it stops a task run inline). `warm`, when given, is each pool process's initializer,
    and the pool is given tasks only once a process has run it, so no task waits in the queue of
    a process still starting while this one could run it. Tasks go from one queue to whichever
    worker is idle; results do not depend on who ran what. Pool processes use the spawn start
    method: numba's OpenMP layer is not fork-safe."""

    def __init__(self, workers: int, warm: Callable[[], Any] | None = None):
        self.workers = max(2, workers)
        self._pool = ProcessPoolExecutor(max_workers=self.workers - 1, mp_context=mp.get_context("spawn"),
                                         initializer=_init_pool_process, initargs=(warm,))
        self._warm = warm
        self._probes: list[Future] | None = None  # one per pool process, from the first stage of 2+ tasks
        self.warm_seconds: float | None = None  # from creating this executor until the pool was warm
        self._t0 = time.perf_counter()

    def map_unordered(self, fn: Task, specs: Sequence[Any]) -> Iterator[tuple[Any, dict]]:
        stage = _Stage(self._pool, self.workers - 1, fn, specs)
        # This process takes the first task, so a stage of one task never starts (or waits for)
        # a pool process.
        if self._warm is None:
            stage.top_up()
        elif stage.todo:
            if self._probes is None:
                try:  # starts the pool processes; each runs `warm` before the probe
                    self._probes = [self._pool.submit(_ready) for _ in range(self.workers - 1)]
                except BaseException as e:  # noqa: BLE001 - e.g. no process could be started: raised by results()
                    stage.done.put((None, None, e))
                    return stage.results()
                for f in self._probes:
                    f.add_done_callback(self._warmed)
            for f in self._probes:  # runs at once for a finished probe
                f.add_done_callback(stage.warmed)
        return stage.results()

    def _warmed(self, probe: Future) -> None:
        if not probe.cancelled() and probe.exception() is None:
            self.warm_seconds = time.perf_counter() - self._t0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Stage:
    """One `LocalExecutor.map_unordered`: its queue of specs, run by the caller's thread (in
    `results`) and by the pool, which is given two tasks per process while plenty are left and
    one towards the end (so no task waits in a busy process's queue while this process is idle)."""

    def __init__(self, pool: ProcessPoolExecutor, procs: int, fn: Task, specs: Sequence[Any]):
        self.pool, self.procs, self.fn, self.n = pool, procs, fn, len(specs)
        self.lock = threading.Lock()
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # (spec, result, exception) from the pool
        self.stop = threading.Event()
        self.inflight = 0  # given to the pool, not finished
        self.todo = deque(specs)
        self.first = self.todo.popleft() if self.todo else None  # this process's, whatever the pool does

    def take(self) -> tuple[bool, Any]:
        with self.lock:
            if self.stop.is_set() or not self.todo:
                return False, None
            return True, self.todo.popleft()

    def warmed(self, probe: Future) -> None:
        exc = CancelledError() if probe.cancelled() else probe.exception()
        if exc is not None:
            self.done.put((None, None, exc))
        else:
            self.top_up()

    def top_up(self) -> None:
        while True:
            with self.lock:
                per_proc = 2 if len(self.todo) > 2 * (self.procs + 1) else 1
                if self.stop.is_set() or not self.todo or self.inflight >= per_proc * self.procs:
                    return
                spec = self.todo.popleft()
                self.inflight += 1
            try:
                fut = self.pool.submit(self.fn, spec)
            except BaseException as e:  # a broken pool: say so instead of waiting forever
                self.done.put((spec, None, e))
                return
            fut.add_done_callback(lambda fut, spec=spec: self._finished(spec, fut))

    def _finished(self, spec: Any, fut: Future) -> None:
        exc = CancelledError() if fut.cancelled() else fut.exception()
        self.done.put((spec, None if exc else fut.result(), exc))
        if exc is None:
            with self.lock:
                self.inflight -= 1
            self.top_up()

    def results(self) -> Iterator[tuple[Any, dict]]:
        """What the pool finished, as it comes; in between, this process's own tasks."""
        left = self.n
        mine = [self.first] if self.n else []
        try:
            while left:
                try:
                    item = self.done.get_nowait()
                except queue.Empty:
                    ok, spec = (True, mine.pop()) if mine else self.take()
                    if ok:
                        result = self.fn(spec)
                        left -= 1
                        yield spec, result
                        continue
                    item = self.done.get()  # nothing left to take: wait for the pool
                spec, result, exc = item
                if exc is not None:
                    raise exc
                left -= 1
                yield spec, result
        finally:
            self.stop.set()  # after an error, Ctrl-C or an abandoned iteration: hand out nothing more


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


def make_executor(kind: str = "local", workers: int = 1, ray_address: str | None = None,
                  warm: Callable[[], Any] | None = None) -> Executor:
    """`warm`: what a local pool process runs before it is given tasks (see `LocalExecutor`)."""
    if kind == "ray":
        return RayExecutor(ray_address, workers)
    if kind != "local":
        raise ValueError(f"--executor must be 'local' or 'ray', got {kind!r}")
    return InlineExecutor() if workers <= 1 else LocalExecutor(workers, warm)
