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
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from curriculum.errors import CurriculumError
from curriculum.resources import usable_cores

Task = Callable[[Any], dict]
# How often a task may be running in a pool process that dies (the OS's OOM killer, a crash in a
# native library) before the build stops: its spec is the likely cause, not bad luck.
MAX_WORKER_DEATHS = 2


class WorkerDied(CurriculumError):
    """A pool process died more than MAX_WORKER_DEATHS times while running the same task."""


def describe_task(spec: Any) -> str:
    """A task's spec in words, for messages: its file (and row groups) or its language (and chunk)."""
    path, language = getattr(spec, "path", None), getattr(spec, "language", None)
    if path is not None:
        groups = getattr(spec, "row_groups", None)
        return f"{type(spec).__name__.removesuffix('Spec').lower()} of {path}" + (
            f" (row groups {groups[0]}..{groups[1] - 1})" if groups else "")
    chunk = getattr(spec, "chunk", None)
    return f"{type(spec).__name__.removesuffix('Spec').lower()} of {language}" + (f" (chunk {chunk})" if chunk is not None else "")


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
        self._warm = warm
        self._pool = self._new_pool()
        self._probes: list[Future] | None = None  # one per pool process, from the first stage of 2+ tasks
        self.warm_seconds: float | None = None  # from creating this executor until the pool was warm
        self.pools_replaced = 0  # pools that broke (a process died) and were started again
        self._t0 = time.perf_counter()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers - 1, mp_context=mp.get_context("spawn"),
                                   initializer=_init_pool_process, initargs=(self._warm,))

    def map_unordered(self, fn: Task, specs: Sequence[Any]) -> Iterator[tuple[Any, dict]]:
        stage = _Stage(self._pool, self.workers - 1, fn, specs, self._replace_pool)
        # This process takes the first task, so a stage of one task never starts (or waits for)
        # a pool process.
        if self._warm is None:
            stage.top_up()
        elif stage.todo:
            self._start(stage)
        return stage.results()

    def _start(self, stage: _Stage) -> None:
        """Give `stage` the pool once it is warm (starting its processes on first use)."""
        if self._probes is None:
            try:  # starts the pool processes; each runs `warm` before the probe
                self._probes = [self._pool.submit(_ready) for _ in range(self.workers - 1)]
            except BaseException as e:  # noqa: BLE001 - e.g. no process could be started: raised by results()
                stage.done.put((None, None, e, stage.gen))
                return
            for f in self._probes:
                f.add_done_callback(self._warmed)
        gen = stage.gen  # the pool these probes belong to
        for f in self._probes:  # runs at once for a finished probe
            f.add_done_callback(lambda f, gen=gen: stage.warmed(f, gen))

    def _replace_pool(self, stage: _Stage) -> None:
        """A pool process died, which breaks the whole pool: start a new one for `stage` (its
        tasks that were in the dead pool are queued again; finished ones are kept)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = stage.pool = self._new_pool()
        self._probes = None
        self.pools_replaced += 1
        if self._warm is None:
            stage.top_up()
        else:
            self._start(stage)

    def _warmed(self, probe: Future) -> None:
        if self.warm_seconds is None and not probe.cancelled() and probe.exception() is None:
            self.warm_seconds = time.perf_counter() - self._t0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Stage:
    """One `LocalExecutor.map_unordered`: its queue of specs, run by the caller's thread (in
    `results`) and by the pool, which is given two tasks per process while plenty are left and
    one towards the end (so no task waits in a busy process's queue while this process is idle)."""

    def __init__(self, pool: ProcessPoolExecutor, procs: int, fn: Task, specs: Sequence[Any],
                 replace_pool: Callable[[_Stage], None] | None = None):
        self.pool, self.procs, self.fn, self.n = pool, procs, fn, len(specs)
        self.replace_pool = replace_pool
        self.lock = threading.Lock()
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # (spec, result, exception, pool generation)
        self.stop = threading.Event()
        self.inflight = 0  # given to the pool, not finished
        self.gen = 0  # which pool: one that broke is replaced once, however many of its tasks report it
        self.deaths: dict[int, int] = {}  # id(spec) -> pool deaths while it ran
        self.todo = deque(specs)
        self.first = self.todo.popleft() if self.todo else None  # this process's, whatever the pool does

    def take(self) -> tuple[bool, Any]:
        with self.lock:
            if self.stop.is_set() or not self.todo:
                return False, None
            return True, self.todo.popleft()

    def warmed(self, probe: Future, gen: int) -> None:
        exc = CancelledError() if probe.cancelled() else probe.exception()
        if exc is not None:
            self.done.put((None, None, exc, gen))
        elif gen == self.gen:
            self.top_up()

    def top_up(self) -> None:
        while True:
            with self.lock:
                per_proc = 2 if len(self.todo) > 2 * (self.procs + 1) else 1
                if self.stop.is_set() or not self.todo or self.inflight >= per_proc * self.procs:
                    return
                spec = self.todo.popleft()
                self.inflight += 1
                gen = self.gen
            try:
                fut = self.pool.submit(self.fn, spec)
            except BaseException as e:  # a broken pool: say so instead of waiting forever
                self.done.put((spec, None, e, gen))
                return
            fut.add_done_callback(lambda fut, spec=spec, gen=gen: self._finished(spec, fut, gen))

    def _finished(self, spec: Any, fut: Future, gen: int) -> None:
        exc = CancelledError() if fut.cancelled() else fut.exception()
        self.done.put((spec, None if exc else fut.result(), exc, gen))
        if exc is None:
            with self.lock:
                self.inflight -= 1
            self.top_up()

    def _requeue(self, spec: Any, exc: BaseException, gen: int) -> None:
        """A task lost to a dead pool process: run it again (tasks are pure and write their outputs
        atomically, so a cut-short attempt leaves nothing), unless it was running every time a
        process died. `spec` None: a new pool's processes died while starting."""
        fresh = gen == self.gen  # the first report of this pool's death replaces it
        with self.lock:
            key = id(spec) if spec is not None else -1
            deaths = self.deaths[key] = self.deaths.get(key, 0) + (spec is not None or fresh)
            if spec is not None:
                self.inflight -= 1
                self.todo.appendleft(spec)
            if deaths > MAX_WORKER_DEATHS:
                self.stop.set()
                what = f"running the {describe_task(spec)}" if spec is not None else "starting (its warm-up)"
                raise WorkerDied(
                    f"a worker process died {deaths} times while {what} (killed by the OS, often for lack of memory, "
                    f"or a crash in a native library: {exc}); the finished tasks are kept: rerun with fewer "
                    f"--workers, or a smaller --chunk-mb / --slice-mb") from exc
            if fresh:
                self.gen += 1
        if fresh and not self.stop.is_set():
            self.replace_pool(self)  # type: ignore[misc]

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
                spec, result, exc, gen = item
                if isinstance(exc, BrokenProcessPool) and self.replace_pool is not None:
                    self._requeue(spec, exc, gen)
                    continue
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
        # RAY_ADDRESS names a cluster as --ray-address does (ray.init then refused num_cpus with a
        # traceback).
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local instance: listeners on 127.0.0.1
        else:
            _reachable(address)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                # The usable cores (affinity, cgroup quota), not os.cpu_count(): a 2-CPU pod of a
                # 64-core host would run 64 tasks at once.
                kwargs.update(num_cpus=workers or usable_cores(), _node_ip_address="127.0.0.1")
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


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a cluster address nothing answers at (ray.init retried it for minutes, printing
    'Failed to connect to GCS'). `auto` and `ray://` addresses are left to Ray."""
    import socket

    from curriculum.errors import CurriculumError

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CurriculumError(f"--ray-address {address}: give HOST:PORT of the cluster's head (e.g. 10.0.0.1:6379), "
                              "auto, or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise CurriculumError(f"--ray-address {address} (or RAY_ADDRESS): nothing answers there ({exc.strerror or exc}); "
                              "start the head (`ray start --head`), or leave the address out for a local "
                              "instance") from None


def make_executor(kind: str = "local", workers: int = 1, ray_address: str | None = None,
                  warm: Callable[[], Any] | None = None) -> Executor:
    """`warm`: what a local pool process runs before it is given tasks (see `LocalExecutor`)."""
    if kind == "ray":
        return RayExecutor(ray_address, workers)
    if kind != "local":
        raise ValueError(f"--executor must be 'local' or 'ray', got {kind!r}")
    return InlineExecutor() if workers <= 1 else LocalExecutor(workers, warm)
