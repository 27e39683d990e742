"""`curriculum build --executor ray --ray-address ADDR` against a Ray cluster started with
`ray start --head` (cluster shape, on one machine): every listener on 127.0.0.1, a worker
SIGKILLed while it runs an extract task, the task retried, and a manifest byte-identical to a
local build with no duplicate or stray shard on disk."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psutil
import pytest

from conftest import ROOT, write_text_corpus
from curriculum.build import BuildConfig, build

# Loopback-only listeners and no auth token under $HOME (DEPENDENCIES.md, trap 6); the same
# variables go to `ray start` (so to every worker it spawns) and to the driver.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
TABLES = ("languages.parquet", "shards.parquet")
MANIFEST_FILES = {"manifest.json", *TABLES}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, **RAY_ENV}
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
    env.setdefault("NUMBA_THREADING_LAYER", "omp")
    return env


@dataclass
class Cluster:
    """A Ray head started by this test; its processes are found by its own temp dir, so that
    stopping it never touches another Ray instance on the machine (no `ray stop`, which kills
    every Ray process of the host)."""

    address: str
    port: int
    temp_dir: Path

    def processes(self) -> list[psutil.Process]:
        """gcs_server, raylet, monitors (their command lines name the temp dir) and everything
        they started: workers (`ray::IDLE`, `ray::extract_task`, ...) and agents."""
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            if str(self.temp_dir) in " ".join(p.info["cmdline"] or []):
                roots.append(p)
        found = {p.pid: p for p in roots}
        for p in roots:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                pass
        return list(found.values())

    def workers_running(self, task: str) -> list[psutil.Process]:
        """Worker processes whose title says they are executing `task` right now."""
        out = []
        for p in self.processes():
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if cmd and cmd[0].startswith(f"ray::{task}"):
                out.append(p)
        return out

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)


@contextmanager
def ray_cluster(num_cpus: int = 2) -> Iterator[Cluster]:
    """`ray start --head` on 127.0.0.1 with its own ports and temp dir; killed by pid on exit."""
    # Short path: Ray's unix sockets live under it and a socket path must fit in 108 bytes.
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    port = _free_port()
    cluster = Cluster(f"127.0.0.1:{port}", port, temp)
    cmd = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1",
        "--port", str(port), "--num-cpus", str(num_cpus), "--include-dashboard", "false",
        "--dashboard-agent-listen-port", str(_free_port()), "--temp-dir", str(temp), "--disable-usage-stats",
    ]
    try:
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=90)
        if proc.returncode != 0:
            pytest.fail(f"`ray start --head` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


def listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, ip, port) of every listening TCP socket of these processes."""
    out = []
    for p in procs:
        try:
            name = p.name()
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        out.extend((name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN)
    return out


def tables(root: Path) -> dict[str, bytes]:
    return {f: (root / f).read_bytes() for f in TABLES}


def stray_files(out: Path) -> tuple[list[str], list[str]]:
    """(shard paths listed more than once, files outside .work that are neither manifest files
    nor listed shards, or are temporaries anywhere under out/)."""
    listed = pl.read_parquet(out / "shards.parquet")["path"].to_list()
    dupes = sorted({p for p in listed if listed.count(p) > 1})
    on_disk = set()
    temps = []
    for f in out.rglob("*"):
        if not f.is_file():
            continue
        rel = f.relative_to(out).as_posix()
        if ".tmp" in f.name:
            temps.append(rel)
        elif not rel.startswith(".work/"):
            on_disk.add(rel)
    stray = sorted(on_disk - set(listed) - MANIFEST_FILES) + sorted(temps)
    missing = sorted(set(listed) - on_disk)
    return dupes, stray + [f"missing: {m}" for m in missing]


@pytest.mark.slow
def test_build_on_a_ray_cluster_survives_a_killed_worker(small_tokenizer, tmp_path):
    corpus = write_text_corpus(tmp_path / "in", n_files=24, docs_per_file=800, seed=11)
    n_files = sum(1 for f in corpus.rglob("*") if f.is_file())
    common = dict(inputs=[str(corpus)], tokenizer=str(small_tokenizer), shard_bytes=256 << 10)
    ref = tmp_path / "local"
    build(BuildConfig(out=str(ref), **common), workers=1, progress=False)

    out = tmp_path / "ray"
    with ray_cluster(num_cpus=2) as cluster:
        idle = listening(cluster.processes())
        assert any(port == cluster.port for _, _, port in idle), f"the GCS port {cluster.port} is not listening: {idle}"
        assert {ip for _, ip, _ in idle} <= LOOPBACK, f"Ray listens beyond 127.0.0.1: {idle}"

        cmd = [sys.executable, "-m", "curriculum.cli", "build", str(corpus), "--out", str(out), "--tokenizer",
               str(small_tokenizer), "--shard-mb", "0.25", "--executor", "ray", "--ray-address", cluster.address]
        log = tmp_path / "driver.log"
        with open(log, "w") as sink:
            driver = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=sink, stderr=subprocess.STDOUT)
        try:
            # Kill once the build is visibly under way (first extract record written), a worker
            # that is executing an extract task at that moment.
            stats = out / ".work" / "extract"
            deadline = time.monotonic() + 90
            victim = None
            while victim is None and time.monotonic() < deadline and driver.poll() is None:
                done = len(list(stats.glob("*/stats.json")))
                if done >= n_files:
                    break
                if done:
                    running = cluster.workers_running("extract_task")
                    if running:
                        victim = running[0]
                        busy = listening(cluster.processes() + [psutil.Process(driver.pid)])
                        os.kill(victim.pid, signal.SIGKILL)
                        done_at_kill = done
                        continue
                time.sleep(0.002)
            assert victim is not None, (
                f"no extract task was caught running before extraction ended ({n_files} files); make the corpus bigger"
            )
            assert done_at_kill < n_files
            assert {ip for _, ip, _ in busy} <= LOOPBACK, f"Ray or the driver listens beyond 127.0.0.1: {busy}"
            assert any(name == "raylet" for name, _, _ in busy) and len(busy) >= 4, busy
            rc = driver.wait(timeout=150)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        assert rc == 0, f"the Ray build failed after a worker was killed:\n{log.read_text()[-3000:]}"
        assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE

        # The driver's core-worker log records the resubmission of the killed task.
        driver_logs = list(cluster.temp_dir.glob(f"session_*/logs/python-core-driver-*_{driver.pid}.log"))
        assert driver_logs, f"no core-driver log for pid {driver.pid} under {cluster.temp_dir}"
        text = "\n".join(p.read_text(errors="replace") for p in driver_logs)
        resubmits = [l for l in text.splitlines() if "resubmit task" in l.lower() and "extract_task" in l]
        assert resubmits, "the killed extract task was not resubmitted (see max_retries in curriculum/executors.py)"

    assert tables(out) == tables(ref), "a Ray build with a killed worker differs from the local build"
    assert (out / "manifest.json").exists()
    dupes, stray = stray_files(out)
    assert dupes == [] and stray == [], f"duplicate shards {dupes}; stray files {stray}"
    assert stray_files(ref) == ([], [])
