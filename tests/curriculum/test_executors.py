"""Executor details that the build tests do not show."""

from __future__ import annotations

import subprocess
import sys

from curriculum.executors import LocalExecutor, _init_pool_process

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


def test_pool_processes_run_the_fast_exit_and_the_warm_up_once_each_first() -> None:
    # The initializer (what a pool process runs once, before any task) is fast_exit + warm;
    # test_pool_processes_are_warmed_up_before_they_get_tasks shows the warm-up in a process.
    ex = LocalExecutor(2, warm=_warm_up)
    try:
        assert ex._pool._initializer is _init_pool_process and ex._pool._initargs == (_warm_up,)
    finally:
        ex.close()


def _meet(spec: tuple[str, int]) -> tuple[int, int]:
    """Note this process's pid, then wait (up to 60 s) until some other process has noted its own:
    with two workers, the first two tasks can only finish once both workers hold one."""
    import os
    import time
    from pathlib import Path

    meet, index = Path(spec[0]), spec[1]
    (meet / f"{os.getpid()}.{index}").touch()
    deadline = time.monotonic() + 60
    while len({p.name.split(".")[0] for p in meet.iterdir()}) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return index, os.getpid()


def _note_or_fail(spec: tuple[str, int, int]) -> int:
    from pathlib import Path

    where, index, bad = spec
    (Path(where) / str(index)).touch()
    if index == bad:
        raise ValueError(f"task {index} is bad")
    return index


def test_local_executor_runs_tasks_in_this_process_and_in_the_pool(tmp_path) -> None:
    import os

    ex = LocalExecutor(2)
    try:
        out = dict(ex.map_unordered(_meet, [(str(tmp_path), i) for i in range(8)]))
    finally:
        ex.close()
    assert sorted(out) == [(str(tmp_path), i) for i in range(8)]
    assert all(index == spec[1] for spec, (index, _) in out.items())  # each result belongs to its spec
    pids = {pid for _, pid in out.values()}
    assert os.getpid() in pids and len(pids) == 2  # the caller is one of the two workers


def test_local_executor_raises_the_first_error_and_hands_out_nothing_more(tmp_path) -> None:
    import pytest

    ex = LocalExecutor(2)
    try:
        # Spec 0 is the in-process worker's first task and fails at once, long before the pool
        # process (given specs 1 and 2) has started.
        with pytest.raises(ValueError, match="task 0 is bad"):
            for _ in ex.map_unordered(_note_or_fail, [(str(tmp_path), i, 0) for i in range(200)]):
                pass
    finally:
        ex.close()
    ran = {int(p.name) for p in tmp_path.iterdir()}
    assert 0 in ran and len(ran) < 10  # the pool's tasks in flight at most, not the other ~200
    ex = LocalExecutor(2)  # and a failed task does not poison a later run
    try:
        assert sorted(r for _, r in ex.map_unordered(_note_or_fail, [(str(tmp_path), i, -1) for i in range(5)])) == list(range(5))
    finally:
        ex.close()


def test_largest_tasks_go_first() -> None:
    from curriculum.build import _largest_first

    assert _largest_first(["b", "aaa", "cc", "d"], len) == ["aaa", "cc", "b", "d"]  # ties keep their order


_WARM: list[int] = []


def _warm_up() -> None:
    import os

    _WARM.append(os.getpid())


def _pid_and_warm(spec: tuple[str, int]) -> tuple[int, bool]:
    import os

    _meet(spec)
    return os.getpid(), os.getpid() in _WARM


def test_pool_processes_are_warmed_up_before_they_get_tasks(tmp_path) -> None:
    import os

    ex = LocalExecutor(2, warm=_warm_up)
    try:
        out = [r for _, r in ex.map_unordered(_pid_and_warm, [(str(tmp_path), i) for i in range(6)])]
        # A one-task stage runs in this process and starts nothing more.
        assert [r for _, r in ex.map_unordered(_pid_and_warm, [(str(tmp_path), 9)])][0][0] == os.getpid()
    finally:
        ex.close()
    pool = {(pid, warm) for pid, warm in out if pid != os.getpid()}
    assert len(pool) == 1 and pool.pop()[1]  # the pool process ran tasks, each after its warm-up
    assert os.getpid() not in _WARM  # this process is never "warmed": it is warm already


def test_a_stage_of_one_task_starts_no_pool_process() -> None:
    ex = LocalExecutor(2, warm=_warm_up)
    try:
        assert [r for _, r in ex.map_unordered(abs, [-3])] == [3]
        assert ex._probes is None and not ex._pool._processes  # nothing spawned
    finally:
        ex.close()


def _warm_fails() -> None:
    raise RuntimeError("warm-up failed")


def _slow_abs(x: int) -> int:
    import time

    time.sleep(0.05)
    return abs(x)


def test_a_warm_up_that_always_fails_stops_the_stage_not_silently() -> None:
    # Each failed start breaks the pool; it is started again, and the third failure stops the
    # stage with a message (this process alone would need 10 s for these tasks).
    import pytest

    from curriculum.executors import MAX_WORKER_DEATHS, WorkerDied

    ex = LocalExecutor(2, warm=_warm_fails)
    try:
        with pytest.raises(WorkerDied, match=rf"died {MAX_WORKER_DEATHS + 1} times while starting \(its warm-up\)"):
            list(ex.map_unordered(_slow_abs, list(range(-200, 0))))
        assert ex.warm_seconds is None and ex.pools_replaced == MAX_WORKER_DEATHS
    finally:
        ex.close()


def _pool_process_dies(spec: tuple[int, str, int]) -> int:
    """In the pool process: note it, then die as if killed. Here: wait a little for that."""
    import os
    import time
    from pathlib import Path

    parent, where, index = spec
    if os.getpid() != parent:
        (Path(where) / "died").touch()
        os._exit(1)
    time.sleep(0.05)
    return index


def test_pool_processes_that_die_on_every_task_fail_the_stage(tmp_path) -> None:
    import os

    import pytest

    from curriculum.executors import WorkerDied

    ex = LocalExecutor(2)
    try:
        with pytest.raises(WorkerDied, match="died 3 times while running"):
            # This process runs its share at 0.05 s a task (up to 10 s): every pool process dies
            # on its first task; each is started again until one task has been lost three times,
            # which must surface as an error, not as a missing result or an endless restart.
            list(ex.map_unordered(_pool_process_dies, [(os.getpid(), str(tmp_path), i) for i in range(200)]))
    finally:
        ex.close()
    assert (tmp_path / "died").exists()


def _sleep_here(spec: tuple[int, str]) -> str:
    import os
    import time
    from pathlib import Path

    parent, where = spec
    if os.getpid() == parent:
        time.sleep(30)
        (Path(where) / "finished").touch()
    return where


def test_ctrl_c_stops_the_task_running_in_this_process(tmp_path) -> None:
    # The task this process runs is in the iterating thread, so SIGINT interrupts it there and
    # then (a worker thread would have to be waited for: 30 s here).
    import os
    import signal
    import threading
    import time

    import pytest

    ex = LocalExecutor(2)
    # Python's own Ctrl-C handler, whatever this process inherited: a test run started in the
    # background by a non-interactive shell inherits SIGINT ignored (POSIX), Python then installs
    # no handler, and the task slept its 30 s (seen in fresh-clone runs started that way).
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    # To the main thread, as a terminal's Ctrl-C is delivered.
    timer = threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    t0 = time.monotonic()
    try:
        timer.start()
        list(ex.map_unordered(_sleep_here, [(os.getpid(), str(tmp_path))] * 3))
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(f"no KeyboardInterrupt: the map ran {time.monotonic() - t0:.1f} s; threads "
                    f"{[t.name for t in threading.enumerate()]}")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, handler)
        ex.close()
    assert not (tmp_path / "finished").exists()


def _die_once_in_a_pool_process(spec: tuple[str, int]) -> tuple[int, int]:
    """The first task a pool process starts kills that process (SIGKILL, as the OS's OOM killer
    would), once in all; every other attempt returns (i, pid) after 0.05 s."""
    import os
    import signal
    import time
    from pathlib import Path

    marks, i = Path(spec[0]), spec[1]
    if os.getpid() != int((marks / "parent").read_text()):
        try:
            fd = os.open(marks / "died", os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one process wins
        except FileExistsError:
            pass
        else:
            os.write(fd, str(i).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return i, os.getpid()


def _always_die_in_a_pool_process(spec: tuple[str, int]) -> int:
    import os
    import signal
    from pathlib import Path

    if spec[1] == 1 and os.getpid() != int((Path(spec[0]) / "parent").read_text()):
        os.kill(os.getpid(), signal.SIGKILL)
    return spec[1]


def test_a_dead_pool_process_is_replaced_and_its_task_run_again(tmp_path) -> None:
    """A pool process killed mid-task breaks the whole pool: a new pool is started, the tasks that
    were in the dead one run again, and every result comes back exactly once."""
    import os

    (tmp_path / "parent").write_text(str(os.getpid()))
    ex = LocalExecutor(2, warm=_warm_up)
    try:
        # 40 tasks of 0.05 s: this process alone would need 2 s, so the pool takes some.
        got = sorted(r for _, r in ex.map_unordered(_die_once_in_a_pool_process, [(str(tmp_path), i) for i in range(40)]))
        assert [i for i, _ in got] == list(range(40))  # each exactly once, the lost one included
        assert (tmp_path / "died").exists() and ex.pools_replaced == 1
        assert len({pid for _, pid in got}) >= 2  # the new pool took tasks too
        # The new pool serves the next stage as the old one did.
        again = sorted(r for _, r in ex.map_unordered(_die_once_in_a_pool_process, [(str(tmp_path), i) for i in range(20)]))
        assert [i for i, _ in again] == list(range(20)) and ex.pools_replaced == 1
    finally:
        ex.close()


def test_a_task_that_kills_every_worker_stops_the_build_naming_it(tmp_path) -> None:
    import os

    import pytest

    from curriculum.executors import MAX_WORKER_DEATHS, WorkerDied

    (tmp_path / "parent").write_text(str(os.getpid()))
    ex = LocalExecutor(2)  # no warm-up: tasks go to the pool at once
    try:
        specs = [(str(tmp_path), 0), (str(tmp_path), 1)]  # 0: this process's; 1: the pool's, every time
        with pytest.raises(WorkerDied, match=rf"died {MAX_WORKER_DEATHS + 1} times while running the tuple of .*--workers"):
            list(ex.map_unordered(_always_die_in_a_pool_process, specs))
        assert ex.pools_replaced == MAX_WORKER_DEATHS
    finally:
        ex.close()
