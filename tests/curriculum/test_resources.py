"""`--workers auto`: the worker count from cores (affinity, cgroup quotas), memory and input size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curriculum.resources import (BYTES_PER_WORKER, WORKER_BASE_BYTES, auto_workers, available_memory,
                                  usable_cores)

SHARD = 256 << 20
GIB = 1 << 30


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_cores_follow_affinity_without_a_quota(tmp_path):
    assert usable_cores(str(tmp_path)) == affinity()
    write(tmp_path, "cpu.max", "max 100000\n")  # v2 without a quota
    assert usable_cores(str(tmp_path)) == affinity()


@pytest.mark.parametrize("files", [
    {"cpu.max": "50000 100000\n"},  # cgroup v2: half a CPU
    {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"},  # v1
])
def test_a_cpu_quota_caps_the_cores(tmp_path, files):
    for rel, text in files.items():
        write(tmp_path, rel, text)
    assert usable_cores(str(tmp_path)) == 1  # ceil(0.5), never 0


def test_a_quota_above_the_affinity_does_not_raise_it(tmp_path):
    write(tmp_path, "cpu.max", f"{(affinity() + 3) * 100000} 100000\n")
    assert usable_cores(str(tmp_path)) == affinity()
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")  # v1: no quota
    assert usable_cores(str(tmp_path)) == affinity()


def test_memory_is_the_smaller_of_meminfo_and_a_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert available_memory(str(meminfo), str(cg)) == 20000000 * 1024
    write(cg, "memory.max", f"{4 * GIB}\n")  # v2: 4 GiB, 1 GiB of it used
    write(cg, "memory.current", f"{GIB}\n")
    assert available_memory(str(meminfo), str(cg)) == 3 * GIB
    write(cg, "memory.max", "max\n")
    assert available_memory(str(meminfo), str(cg)) == 20000000 * 1024
    write(cg, "memory/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    write(cg, "memory/memory.usage_in_bytes", f"{GIB}\n")
    assert available_memory(str(meminfo), str(cg)) == 20000000 * 1024
    write(cg, "memory/memory.limit_in_bytes", f"{2 * GIB}\n")
    assert available_memory(str(meminfo), str(cg)) == GIB
    assert available_memory(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_the_count_is_the_smallest_limit_and_says_which():
    big = 100 * BYTES_PER_WORKER
    a = auto_workers(big, SHARD, cores=8, memory=None)
    assert a.workers == 8 and "limited by usable cores" in a.describe() and "8 usable core(s)" in a.describe()
    a = auto_workers(3 * BYTES_PER_WORKER - 1, SHARD, cores=8, memory=None)  # one worker per 32 MB, rounded up
    assert a.workers == 3 and "the input's size" in a.describe()
    a = auto_workers(big, SHARD, cores=64, memory=5 * (WORKER_BASE_BYTES + SHARD) + 1)
    assert a.workers == 5 and "available memory" in a.describe()
    a = auto_workers(big, 4 * SHARD, cores=64, memory=5 * (WORKER_BASE_BYTES + SHARD))  # bigger shards, fewer
    assert a.workers < 5
    for tiny in (0, 1, 1 << 20):
        assert auto_workers(tiny, SHARD, cores=64, memory=0).workers == 1  # never below one
    assert auto_workers(big, SHARD).workers == min(usable_cores(), auto_workers(big, SHARD).memory_workers or 10**9)


def test_inline_threads_follow_the_usable_cores(monkeypatch, small_tokenizer, tmp_path):
    """A build inline (one worker) and a tokenizer given no thread count use the cores this process
    may use, quota counted, not the host's CPU count or numba's affinity-based pool size."""
    import numba

    import curriculum.build as build_mod
    import curriculum.tokenize as tokenize_mod

    monkeypatch.setattr(tokenize_mod, "usable_cores", lambda: 3)
    assert tokenize_mod.load_tokenizer(small_tokenizer)._num_threads == 3
    assert tokenize_mod.load_tokenizer(small_tokenizer, num_threads=5)._num_threads == 5

    monkeypatch.setattr(build_mod, "usable_cores", lambda: 1)
    raw = build_mod.BuildConfig(inputs=[str(tmp_path)], out=str(tmp_path / "out"), tokenizer=str(small_tokenizer)).model_dump()
    try:
        build_mod._task_config(raw)
        assert numba.get_num_threads() == 1
        monkeypatch.setattr(build_mod, "usable_cores", lambda: 10_000)  # never above numba's pool
        build_mod._task_config(raw)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


BOUND_TASKS = """
import numba
import numpy as np
from curriculum.build import BuildConfig, _task_config

raw = BuildConfig(inputs=["in"], out="out", tokenizer="t.model").model_dump()
seen = []
for _ in range(3):
    _task_config(raw)
    seen.append(numba.get_num_threads())
    numba.njit(parallel=True)(lambda x: np.sum(x * 2.0))(np.ones(1000))  # a parallel region on this thread
import multiprocessing as mp
import os
ctx = mp.get_context("spawn")
with ctx.Pool(1) as pool:  # a build's pool process, started from this thread after its tasks
    child = pool.apply(os.sched_getaffinity, (0,))
print(len(os.sched_getaffinity(0)), len(child), seen, numba.config.NUMBA_NUM_THREADS)
"""


def test_inline_tasks_keep_their_threads_under_openmp_binding(tmp_path):
    """OMP_PROC_BIND pins the thread that starts numba's pool to one CPU; reading the affinity
    after that gave every task but the first of an inline build one thread."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env.update(OMP_PROC_BIND="close", NUMBA_THREADING_LAYER="omp", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, "-c", BOUND_TASKS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    here, child, rest = out.stdout.split(" ", 2)
    seen, pool = rest.rsplit("]", 1)
    assert [int(x) for x in seen.strip("[ ").split(",")] == [min(int(pool), usable_cores())] * 3
    # The thread that started the pool is unpinned, so what it starts later is not confined to one CPU.
    assert int(here) == int(child) == len(os.sched_getaffinity(0))
