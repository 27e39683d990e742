"""The local launcher (`trainer-client train --nproc-per-node N`): how a run that stops says so."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import psutil

import trainer_client.cli as cli
from trainer_client.cli import launch_env, launch_local, resume_hint


def test_resume_hint_names_the_checkpoint_dir_or_says_a_rerun_starts_over():
    assert resume_hint(["train", "--checkpoint-dir", "runs/a"]) == \
        "rerun the same command to resume from the newest checkpoint in runs/a"
    assert resume_hint(["train", "--checkpoint-dir=runs/b"]).endswith("in runs/b")
    assert "starts from the beginning" in resume_hint(["train", "--server", "http://x:1"])


def test_usable_cores_read_the_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # one CPU's worth
    assert cli.usable_cores(str(cpu_max)) == 1
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: two threads
    assert cli.usable_cores(str(cpu_max)) == min(affinity, 2)
    cpu_max.write_text("max 100000\n")
    assert cli.usable_cores(str(cpu_max)) == affinity
    assert cli.usable_cores(str(tmp_path / "absent")) == affinity


def test_ranks_share_the_usable_cores_not_the_hosts(monkeypatch):
    monkeypatch.setattr(cli, "usable_cores", lambda: 4)  # e.g. a 4-CPU pod of a 64-core host
    env = launch_env(2, 1234, {"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "2"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["WORLD_SIZE"], env["PATH"]) == ("127.0.0.1", "1234", "2", "/bin")
    assert launch_env(8, 1, {})["OMP_NUM_THREADS"] == "1"
    assert launch_env(2, 1, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"  # the user's setting wins


def test_a_rank_killed_by_a_signal_is_named_and_the_exit_code_says_which(capfd):
    # It exited 247 (-9 as a byte) with nothing on stderr.
    with socket.socket() as hole:  # accepts and never answers: the ranks wait in their first request
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        out: dict[str, int] = {}
        argv = ["train", "--server", url, "--model", "tiny", "--vocab-size", "100", "--checkpoint-dir", "ck/x"]
        t = threading.Thread(target=lambda: out.setdefault("rc", launch_local(2, argv)))
        t.start()
        try:
            me = psutil.Process()
            deadline = time.time() + 120
            ranks = []
            while time.time() < deadline and len(ranks) < 2:
                ranks = [c for c in me.children() if c.environ().get("RANK") in ("0", "1")]
                time.sleep(0.1)
            assert len(ranks) == 2, "the launcher did not start two ranks"
            victim = next(c for c in ranks if c.environ()["RANK"] == "1")
            os.kill(victim.pid, signal.SIGKILL)
            t.join(60)
        finally:
            for c in psutil.Process().children(recursive=True):
                c.kill()
    assert not t.is_alive() and out["rc"] == 128 + signal.SIGKILL
    err = capfd.readouterr().err
    assert f"rank 1 (pid {victim.pid}) was killed by SIGKILL; stopped the other ranks; rerun the same command to " \
           "resume from the newest checkpoint in ck/x" in err


def test_a_run_stopped_by_an_outage_says_how_to_resume(monkeypatch, capsys):
    # "no sampler server answered ..." ended the run with exit 2 and no word about its checkpoints.
    import trainer_client.train
    from trainer_client import cli
    from trainer_client.client import SamplerUnavailable

    def outage(cfg):
        raise SamplerUnavailable("GET /v1/batches/15: no sampler server answered after 8 round(s)")

    monkeypatch.setattr(trainer_client.train, "train", outage)
    argv = ["train", "--server", "http://127.0.0.1:9", "--model", "tiny", "--vocab-size", "100", "--checkpoint-dir", "ck/y"]
    monkeypatch.setattr(cli, "_state", {**cli._state, "argv": argv, "debug": False})
    assert cli.app(argv, standalone_mode=False) == 2  # click returns the exit code instead of exiting
    err = capsys.readouterr().err
    assert "no sampler server answered after 8 round(s); rerun the same command to resume from the newest " \
           "checkpoint in ck/y" in err


def test_logs_keep_each_step_once_across_a_resume(tmp_path):
    from trainer_client.train import _Logs

    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in range(12)) + '{"step": 12, "lo')
    (tmp_path / "batches.rank0.tsv").write_text("".join(f"{s}\tabc\n" for s in range(13)))
    logs = _Logs(tmp_path, 0, start=10)  # resumed from the checkpoint at step 10
    logs.metrics.write('{"step": 10, "loss": 2.0}\n')
    logs.batches.write("10\tdef\n")
    logs.close()
    steps = [__import__("json").loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(11))  # 10 and 11 of the killed run dropped, the cut line too
    assert (tmp_path / "batches.rank0.tsv").read_text().splitlines()[-2:] == ["9\tabc", "10\tdef"]
    _Logs(tmp_path, 0, start=0).close()  # a fresh run from step 0 in the same directory
    assert (tmp_path / "metrics.jsonl").read_text() == "" and (tmp_path / "batches.rank0.tsv").read_text() == ""
