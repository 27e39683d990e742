"""How many local workers a build should use when the user says `--workers auto` (the default).

A pool process costs ~1 s of start-up (imports, numba's first kernels, the tokenizer) and ~1 GB
of memory at the default shard size (measured: 0.82 GB RSS per worker on a 2 GB input, of which
the shard buffer is one `--shard-mb`). So the count is the smallest of:
- the cores this process may use: its CPU affinity, and a cgroup v2 CPU quota (a container
  limited to 8 CPUs on a 128-core host has 8, though `os.cpu_count()` says 128);
- the memory available (MemAvailable, and a cgroup v2 memory limit) over a worker's budget;
- one worker per `BYTES_PER_WORKER` of input: below that a second process spends longer
  starting than it saves (measured: 42 MB builds as fast on one worker as on two, 200 MB
  ~1.8x faster on two).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

BYTES_PER_WORKER = 32 << 20  # input bytes (on disk) that justify one more process
WORKER_BASE_BYTES = 768 << 20  # a worker's memory besides its shard buffer (tokenizer, Arrow batches)


@dataclass(frozen=True)
class AutoWorkers:
    workers: int
    cores: int
    memory_workers: int | None  # None: available memory unknown
    size_workers: int

    def describe(self) -> str:
        limits = [what for what, n in (("usable cores", self.cores), ("the input's size", self.size_workers),
                                       ("available memory", self.memory_workers)) if n == self.workers]
        return f"{self.workers} worker(s) (--workers auto: {self.cores} usable core(s); limited by {' and '.join(limits)})"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cgroup_dirs(root: str, controller: str) -> list[str]:
    """Directories that may hold this process's cgroup files for `controller`: its own cgroup (from
    /proc/self/cgroup; v2 `0::/path`, v1 `N:cpu,cpuacct:/path`), then the mount's root (what a
    container with its own cgroup namespace sees as its cgroup)."""
    dirs = []
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        path = path.rstrip("/")
        if not controllers:
            dirs += [root + path, root]
        elif controller in controllers.split(","):
            dirs += [f"{root}/{controllers}{path}", f"{root}/{controllers}", f"{root}/{controller}"]
    return list(dict.fromkeys([*dirs, root, f"{root}/{controller}"]))


def _ints(path: str) -> list[int] | None:
    try:
        return [int(x) for x in (_read(path) or "").split()] or None
    except ValueError:
        return None  # e.g. "max"


def _mask() -> frozenset[int] | None:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


# The calling thread's CPU affinity when this module was imported (before any task runs). With
# OpenMP thread binding (OMP_PROC_BIND, set on many HPC nodes) the thread that starts numba's pool
# is pinned to one CPU, and os.sched_getaffinity(0) reports the calling thread's mask: read after
# a build's first task it said 1, and every later task of an inline build ran its kernels on one
# thread.
_MASK = _mask()
_AFFINITY = len(_MASK) if _MASK else (os.cpu_count() or 1)


_unpinned = threading.local()


def set_kernel_threads(n: int) -> None:
    """`numba.set_num_threads(n)` for the calling thread, which starts numba's pool on the first call
    in a process; the first call in each thread then gives it its CPUs back (`unpin`). Every place
    that sets a thread count goes through here, so no thread stays pinned under OMP_PROC_BIND."""
    import numba

    numba.set_num_threads(n)
    if not getattr(_unpinned, "done", False):  # the pool starts once, in some thread's first call
        unpin()
        _unpinned.done = True


def unpin() -> None:
    """Give the calling thread back the CPUs it had at import, after numba's OpenMP pool started on
    it under OMP_PROC_BIND: threads and processes it starts later (the tokenizer's, a build's pool
    processes) inherit its mask, and would all run on the one CPU it was pinned to."""
    if _MASK is None:
        return
    try:
        if frozenset(os.sched_getaffinity(0)) != _MASK:
            os.sched_setaffinity(0, _MASK)
    except OSError:  # e.g. a CPU taken away since (cpuset): keep what the system gives
        pass


def usable_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may run on: its affinity (as at import, see `_AFFINITY`), capped by a
    cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`)."""
    cores = _AFFINITY
    for d in _cgroup_dirs(cgroup_root, "cpu"):
        v2 = _ints(f"{d}/cpu.max")  # "max 100000" reads as None: no quota
        quota, period = (v2 if v2 and len(v2) == 2 else
                         ((_ints(f"{d}/cpu.cfs_quota_us") or [-1])[0], (_ints(f"{d}/cpu.cfs_period_us") or [0])[0]))
        if quota > 0 and period > 0:
            cores = min(cores, math.ceil(quota / period))
    return max(1, cores)


def available_memory(meminfo: str = "/proc/meminfo", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes of memory available to this process: MemAvailable, capped by a cgroup limit (v2
    `memory.max`, v1 `memory.limit_in_bytes`) less what the cgroup already uses. None when
    nothing can be read."""
    best = None
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                best = int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                pass
    for d in _cgroup_dirs(cgroup_root, "memory"):
        for limit_file, used_file in (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit, used = _ints(f"{d}/{limit_file}"), _ints(f"{d}/{used_file}")
            if limit and used and limit[0] < 1 << 60:  # v1 writes "no limit" as ~2^63
                room = max(0, limit[0] - used[0])
                best = room if best is None else min(best, room)
    return best


def auto_workers(input_bytes: int, shard_bytes: int, cores: int | None = None,
                 memory: int | None | str = "probe") -> AutoWorkers:
    """The worker count for `--workers auto` (see the module docstring). `cores` and `memory`
    default to this machine's (`memory=None`: unknown, no memory cap)."""
    cores = usable_cores() if cores is None else max(1, cores)
    mem = available_memory() if memory == "probe" else memory
    memory_workers = None if mem is None else max(1, int(mem) // (WORKER_BASE_BYTES + shard_bytes))
    size_workers = max(1, -(-max(0, input_bytes) // BYTES_PER_WORKER))
    n = min(cores, size_workers, memory_workers if memory_workers is not None else cores)
    return AutoWorkers(n, cores, memory_workers, size_workers)
