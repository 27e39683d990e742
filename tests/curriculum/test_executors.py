"""Executor details that the build tests do not show."""

from __future__ import annotations

import subprocess
import sys

from curriculum.executors import LocalExecutor, fast_exit

CYCLE_AT_EXIT = """
import sys
from curriculum.executors import fast_exit
if sys.argv[1] == "fast":
    fast_exit()

class Node:
    def __del__(self):
        sys.stdout.write("collected\\n")

a, b = Node(), Node()
a.other, b.other = b, a  # a reference cycle: only the garbage collector frees it
del a, b
"""


def test_fast_exit_skips_the_final_collection() -> None:
    # Without it, the exit's collection finds the cycle (and, in a worker that loaded numba, walks
    # all of numba's objects for ~0.25 s); with it, the exit leaves the cycle to the OS.
    plain = subprocess.run([sys.executable, "-c", CYCLE_AT_EXIT, "plain"], capture_output=True, text=True, check=True)
    fast = subprocess.run([sys.executable, "-c", CYCLE_AT_EXIT, "fast"], capture_output=True, text=True, check=True)
    assert plain.stdout.count("collected") == 2
    assert fast.stdout == ""


def test_pool_workers_exit_fast() -> None:
    ex = LocalExecutor(1)
    try:
        assert ex._pool._initializer is fast_exit
        assert [r for _, r in ex.map_unordered(abs, [-3])] == [3]
    finally:
        ex.close()
