"""The train loop end to end: real sampler servers on 127.0.0.1, two gloo ranks, a real-text corpus.

Every run logs step → sha256(input_ids + labels) per rank; the reference for those digests is the
Sampler itself (a batch is a pure function of build, step, rank and world size), so "the batches
an uninterrupted run would have seen" is checked against the source, not only against another run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import write_text_corpus

ROOT = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 40  # 24 at 8 x 64, then 8 + 8 at 4 x 128
RECIPE = """
name = "train-test"

[[phases]]
name = "pretrain"
tokens = 12_288
batch_tokens = 512
seq_len = 64
languages = { top = 4 }
tau = 0.7
mask_ratio = 0.30
lr = { warmup_tokens = 1024, decay = "none" }

[[phases]]
name = "midtrain"
tokens = 4096
batch_tokens = 512
seq_len = 128
languages = { top = 6 }
tau = 0.5
mask_ratio = 0.15

[[phases]]
name = "decay"
tokens = 4096
batch_tokens = 512
seq_len = 128
languages = "all"
tau = 0.3
mask_ratio = 0.15
lr = { decay = "inv_sqrt", final_factor = 0.1 }
"""
ENV = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")),
           NUMBA_THREADING_LAYER="omp")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `sampler-server serve` subprocess on 127.0.0.1."""

    def __init__(self, manifest: Path, recipe: Path, seed: int, log: Path, extra: tuple[str, ...] = ()):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sampler_server.cli", "serve", "--manifest", str(manifest), "--recipe", str(recipe),
             "--seed", str(seed), "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", *extra],
            cwd=ROOT, env=ENV, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"server exited: {Path(self._log.name).read_text()}"
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()["build_id"]
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server {self.url} not ready after {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory, small_tokenizer):
    """A built real-text manifest, the recipe, and the Sampler's digests of every batch."""
    from curriculum.build import BuildConfig, build
    from curriculum.manifest import read_manifest
    from sampler_server.sampler import Sampler

    tmp = tmp_path_factory.mktemp("train")
    corpus = write_text_corpus(tmp / "corpus", n_files=6, docs_per_file=100)
    manifest = tmp / "manifest"
    build(BuildConfig(inputs=[str(corpus)], out=str(manifest), tokenizer=str(small_tokenizer), shard_bytes=64 << 10),
          workers=1, progress=False)
    recipe = tmp / "recipe.toml"
    recipe.write_text(RECIPE)
    sampler = Sampler(manifest, recipe, seed=0)
    assert sampler.total_steps == TOTAL_STEPS
    digests = {}
    for step in range(TOTAL_STEPS):
        for rank in (0, 1):
            b = sampler.batch(step, rank, 2)
            digests[rank, step] = hashlib.sha256(b.input_ids.tobytes() + b.labels.tobytes()).hexdigest()
    vocab = read_manifest(manifest).meta.tokenizer.vocab_size
    return {"tmp": tmp, "manifest": manifest, "recipe": recipe, "digests": digests, "vocab": vocab,
            "build_id": sampler.build_id}


@pytest.fixture(scope="module")
def servers(data):
    """Two replicas of the build (A, B) and one of another seed (C: another build id)."""
    d = data["tmp"]
    # C is another run (another seed): it gets its own amendment journal, as a user must give it.
    srv = {name: Server(data["manifest"], data["recipe"], seed, d / f"server-{name}.log",
                        () if seed == 0 else ("--journal", str(d / f"seed{seed}.amendments.jsonl")))
           for name, seed in (("A", 0), ("B", 0), ("C", 1))}
    try:
        ids = {name: s.wait_ready() for name, s in srv.items()}
        assert ids["A"] == ids["B"] == data["build_id"] != ids["C"]
        yield srv
    finally:
        for s in srv.values():
            s.kill()


def train_args(data, urls: list[str], *extra: str) -> list[str]:
    return ["train", "--server", ",".join(urls), "--model", "tiny", "--vocab-size", str(data["vocab"]),
            "--report-every", "5", "--lr", "3e-3", *extra]


def run_cli(args: list[str], *, launcher: list[str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(launcher or []), "-m", "trainer_client.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def read_digests(log_dir: Path, rank: int) -> list[tuple[int, str]]:
    lines = (log_dir / f"batches.rank{rank}.tsv").read_text().splitlines()
    return [(int(s), h) for s, h in (line.split("\t") for line in lines)]


def read_metrics(log_dir: Path) -> list[dict]:
    path = log_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]  # complete lines only


def last_step(log_dir: Path) -> int:
    m = read_metrics(log_dir)
    return m[-1]["step"] if m else -1


def assert_batches_are_the_samplers(data, log_dir: Path) -> None:
    """Every batch each rank trained on is the Sampler's, and every step was trained."""
    for rank in (0, 1):
        seen = read_digests(log_dir, rank)
        assert {s for s, _ in seen} == set(range(TOTAL_STEPS))
        bad = [(s, rank) for s, h in seen if h != data["digests"][rank, s]]
        assert not bad, f"batches differ from the sampler's at (step, rank) {bad[:5]}"


@pytest.fixture(scope="module")
def reference(data, servers):
    """An uninterrupted two-rank run through all three phases, launched by torchrun."""
    log_dir, ckpt = data["tmp"] / "ref-logs", data["tmp"] / "ref-ckpt"
    proc = run_cli(train_args(data, [servers["A"].url], "--log-dir", str(log_dir), "--checkpoint-dir", str(ckpt),
                              "--checkpoint-every", "10"),
                   launcher=["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = read_metrics(log_dir)
    return {"log_dir": log_dir, "ckpt": ckpt, "stdout": proc.stdout,
            "loss": {m["step"]: m["loss"] for m in metrics}, "metrics": metrics}


def test_two_ranks_train_through_the_phase_boundaries_and_the_loss_falls(data, servers, reference):
    m = reference["metrics"]
    assert [x["step"] for x in m] == list(range(TOTAL_STEPS))
    assert [x["seq_len"] for x in m] == [64] * 24 + [128] * 16  # changed without a restart
    assert [x["phase"] for x in m][22:26] == ["pretrain", "pretrain", "midtrain", "midtrain"]
    losses = [x["loss"] for x in m]
    assert all(0 < v < 20 for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[20:24]) / 4
    assert last < first - 1.0, (first, last)  # real text: it learns within one phase
    assert m[-1]["lr"] < m[30]["lr"]  # the decay phase's LR factor came with the batches
    assert_batches_are_the_samplers(data, reference["log_dir"])
    out = reference["stdout"]
    assert "loss per phase" in out and "midtrain" in out and "decay" in out
    live = httpx.get(servers["A"].url + "/v1/progress").json()  # rank 0 reported every 5 steps
    assert live["reports"] == TOTAL_STEPS // 5 and live["latest"]["step"] == TOTAL_STEPS - 1
    assert min(losses[35:]) <= live["latest"]["loss"] <= max(losses[35:])  # masked-token mean of the window
    assert len(live["latest"]["loss_by_language"]) >= 4
    assert sorted(p.name for p in reference["ckpt"].iterdir()) == ["step_00000030", "step_00000040"]  # keep 2


def test_resume_after_kill_9_sees_the_same_batches_and_continues_the_loss(data, servers, reference):
    log_dir, ckpt = data["tmp"] / "resume-logs", data["tmp"] / "resume-ckpt"
    args = train_args(data, [servers["A"].url], "--log-dir", str(log_dir), "--checkpoint-dir", str(ckpt),
                      "--checkpoint-every", "5", "--nproc-per-node", "2")
    cmd = [sys.executable, "-m", "trainer_client.cli", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            done = (ckpt / "step_00000015" / "trainer.json").exists()
            if done and last_step(log_dir) >= 17:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("the run did not reach step 17")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-step
        proc.wait(timeout=30)
    killed_at = last_step(log_dir)
    resume_from = max(int(p.name.split("_")[1]) for p in ckpt.iterdir() if p.name.startswith("step_") and "." not in p.name)
    assert 15 <= resume_from <= killed_at + 1

    again = run_cli(args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {ckpt / f'step_{resume_from:08d}'}" in again.stdout
    # Each step logged once: the lines the killed run wrote past the checkpoint were dropped (the
    # resumed run trained those steps again), not appended to.
    assert [x["step"] for x in read_metrics(log_dir)] == list(range(TOTAL_STEPS))
    for rank in (0, 1):
        assert [s for s, _ in read_digests(log_dir, rank)] == list(range(TOTAL_STEPS))
    assert_batches_are_the_samplers(data, log_dir)  # before and after the kill, both ranks
    resumed = {x["step"]: x["loss"] for x in read_metrics(log_dir) if x["step"] >= resume_from}
    assert len(resumed) == TOTAL_STEPS - resume_from
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference["loss"][step], rel=1e-5, abs=1e-6), step


def test_failover_when_a_server_dies_mid_run_keeps_the_same_batches(data, servers, reference):
    log_dir = data["tmp"] / "failover-logs"
    doomed = Server(data["manifest"], data["recipe"], 0, data["tmp"] / "server-doomed.log")
    try:
        doomed.wait_ready()
        cmd = [sys.executable, "-m", "trainer_client.cli",
               *train_args(data, [doomed.url, servers["B"].url], "--log-dir", str(log_dir), "--nproc-per-node", "2")]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.time() + 180
            while time.time() < deadline and last_step(log_dir) < 10:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
            doomed.kill()  # SIGKILL: in-flight requests break mid-transfer
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        doomed.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert f"failing over from {doomed.url} to {servers['B'].url}" in err
    assert_batches_are_the_samplers(data, log_dir)
    losses = {x["step"]: x["loss"] for x in read_metrics(log_dir)}
    assert losses == pytest.approx(reference["loss"], rel=1e-5, abs=1e-6)  # same batches, same run


def test_a_server_with_another_build_stops_the_run_with_a_message(data, servers, reference):
    a, c = servers["A"], servers["C"]
    c_id = httpx.get(c.url + "/healthz").json()["build_id"]
    # A fresh run given a replica of another build.
    proc = run_cli(train_args(data, [a.url, c.url], "--steps", "3"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"server {c.url} serves build {c_id}, but this run uses build {data['build_id']}" in proc.stderr
    # A checkpoint of build A resumed against C.
    ckpt = data["tmp"] / "mismatch-ckpt"
    shutil.copytree(reference["ckpt"] / "step_00000030", ckpt / "step_00000030")
    proc = run_cli(train_args(data, [c.url], "--checkpoint-dir", str(ckpt)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"serves build {c_id}, but this run uses build {data['build_id']} (the build checkpoint" in proc.stderr
    # A start step past the run (was "nothing to do" and exit 0).
    total = httpx.get(a.url + "/v1/recipe").json()["total_steps"]
    proc = run_cli(train_args(data, [a.url], "--start-step", str(total), "--checkpoint-dir", str(data["tmp"] / "past")))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--start-step {total}: the run has {total:,} steps" in proc.stderr, proc.stderr
    # --steps past the run was clamped, and a --start-step not before --steps trained nothing, exit 0.
    for args, says in ((["--steps", str(total + 1)], f"--steps {total + 1}: the run has {total:,} steps"),
                       (["--start-step", "10", "--steps", "5"], "--start-step 10 is not before --steps 5")):
        proc = run_cli(train_args(data, [a.url], *args, "--checkpoint-dir", str(data["tmp"] / "past")))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and says in proc.stderr, proc.stderr


def test_a_world_size_that_a_later_step_cannot_split_is_refused_at_start_up():
    # It trained every step of the first phase, then died on the second's batch (days into a run).
    from trainer_client.train import TrainError, check_world_size

    phases = [{"name": "pretrain", "start_step": 0, "steps": 100, "batch_sequences": 16, "warmup_steps": 10,
               "warmup_batch_sizes": [4, 8, 12]},
              {"name": "midtrain", "start_step": 100, "steps": 50, "batch_sequences": 15, "warmup_steps": 0,
               "warmup_batch_sizes": []}]
    with pytest.raises(TrainError, match=r"2 ranks do not divide the global batch of 15 sequences of phase 'midtrain', "
                                         r"steps 100..149; use a world size that divides 15"):
        check_world_size(phases, 2, 0, 150)
    check_world_size(phases, 2, 0, 100)  # the run stops before midtrain
    with pytest.raises(TrainError, match=r"8 ranks do not divide the global batch of 4 sequences of phase 'pretrain' "
                                         r"\(a batch warm-up step\)"):
        check_world_size(phases, 8, 0, 100)
    check_world_size(phases, 8, 10, 100)  # resumed past the warm-up: only the full batch counts
    check_world_size(phases, 4, 0, 100)
    # A phase table without batch sizes is not a pass; an older server's variant table (global_batch
    # only) is checked on its full batch.
    with pytest.raises(TrainError, match="gives no batch size for phase 'midtrain'"):
        check_world_size([phases[0], {"name": "midtrain", "start_step": 100, "steps": 50}], 2, 0, 150)
    with pytest.raises(TrainError, match="global batch of 15 sequences of phase 'midtrain'"):
        check_world_size([phases[0], {"name": "midtrain", "start_step": 100, "steps": 50, "global_batch": 15}], 2, 0, 150)


def test_a_variants_phase_table_carries_the_batch_sizes(tmp_path):
    # `trainer-client --variant` reads /v1/schedule?variant=; its table lacked batch_sequences and
    # the warm-up sizes, so the world-size check skipped every phase of a variant run.
    from fastapi.testclient import TestClient

    from curriculum.randomcorpus import write_random_corpus
    from sampler_server.app import create_app
    from sampler_server.settings import ServerSettings

    manifest = write_random_corpus(tmp_path / "m", {"aaa_Latn": 40_000, "bbb_Latn": 20_000}, seed=1, mean_doc_tokens=50,
                                   shard_tokens=20_000)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "v"\n'
        '[[phases]]\nname = "pretrain"\ntokens = 65536\nbatch_tokens = 4096\nseq_len = 128\nlanguages = "all"\n'
        'tau = 0.7\nmask_ratio = 0.3\n'
        '[[phases]]\nname = "decay"\ntokens = 24576\nbatch_tokens = 3072\nseq_len = 128\nlanguages = "all"\n'
        'tau = 0.3\nmask_ratio = 0.1\n'
        '[[phases.variants]]\nname = "all"\n[[phases.variants]]\nname = "one"\nlanguages = ["aaa_Latn"]\n'
    )
    app = create_app(ServerSettings(manifest=manifest, recipe=recipe, journal=tmp_path / "j.jsonl"))
    with TestClient(app) as c:
        main = c.get("/v1/recipe").json()["phases"]
        for variant in ("all", "one"):
            table = c.get("/v1/schedule", params={"variant": variant}).json()["phases"]
            assert [p["batch_sequences"] for p in table] == [p["batch_sequences"] for p in main] == [32, 24]
            assert all("warmup_batch_sizes" in p and "warmup_steps" in p for p in table)


def test_the_same_command_with_its_start_step_resumes_and_another_start_is_refused(data, servers, reference):
    # "Rerun the same command to resume" failed when that command had --start-step.
    ckpt = data["tmp"] / "start-step-ckpt"
    shutil.copytree(reference["ckpt"], ckpt)
    same = run_cli(train_args(data, [servers["A"].url], "--checkpoint-dir", str(ckpt), "--start-step", "0"))
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]
    assert f"already at step {TOTAL_STEPS}, --steps is {TOTAL_STEPS}" in same.stdout and "resumed from" in same.stdout
    other = run_cli(train_args(data, [servers["A"].url], "--checkpoint-dir", str(ckpt), "--start-step", "5"))
    assert other.returncode == 2 and f"--start-step 5, but checkpoint {ckpt / 'step_00000040'} continues at step 40" \
        in other.stderr, other.stderr


def test_init_from_starts_a_fresh_run_from_a_checkpoints_weights(data, servers, reference):
    """How a phase variant branches off the main line: weights and optimizer of a checkpoint, data
    from its next step, a new checkpoint directory (here the same build, so the losses must agree)."""
    log_dir = data["tmp"] / "init-logs"
    proc = run_cli(train_args(data, [servers["B"].url], "--init-from", str(reference["ckpt"] / "step_00000030"),
                              "--checkpoint-dir", str(data["tmp"] / "init-ckpt"), "--steps", "33",
                              "--log-dir", str(log_dir), "--nproc-per-node", "2"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "initialised from" in proc.stdout
    losses = {x["step"]: x["loss"] for x in read_metrics(log_dir)}
    assert list(losses) == [30, 31, 32]
    assert losses == pytest.approx({s: reference["loss"][s] for s in losses}, rel=1e-5, abs=1e-6)
    assert (data["tmp"] / "init-ckpt" / "step_00000033" / "trainer.json").exists()


def optimizer_groups(ckpt: Path) -> list[dict]:
    """The optimizer param_groups a DCP checkpoint holds (read back in this process)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    import torch

    out = ckpt.parent / f"{ckpt.name}.pt"
    dcp_to_torch_save(str(ckpt), str(out))
    return torch.load(out, weights_only=False)["optim"]["param_groups"]


def test_init_from_takes_its_hyperparameters_from_the_flags_not_the_checkpoint(data, servers, reference):
    # Loading the optimizer state restored the saved param_groups over the flags: a decay variant
    # started with --init-from ... --weight-decay X trained with the parent's weight decay.
    assert [g["weight_decay"] for g in optimizer_groups(reference["ckpt"] / "step_00000030")] == [0.01, 0.0]
    ckpt = data["tmp"] / "wd-ckpt"
    proc = run_cli(train_args(data, [servers["A"].url], "--init-from", str(reference["ckpt"] / "step_00000030"),
                              "--checkpoint-dir", str(ckpt), "--steps", "31", "--weight-decay", "0.3",
                              "--log-dir", str(data["tmp"] / "wd-logs")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [g["weight_decay"] for g in optimizer_groups(ckpt / "step_00000031")] == [0.3, 0.0]


def test_a_damaged_checkpoint_is_one_line_naming_it(data, servers, reference):
    ckpt = data["tmp"] / "damaged-ckpt"
    shutil.copytree(reference["ckpt"] / "step_00000030", ckpt / "step_00000030")
    part = next((ckpt / "step_00000030").glob("*.distcp"))
    part.write_bytes(part.read_bytes()[:1000])
    proc = run_cli(train_args(data, [servers["A"].url], "--checkpoint-dir", str(ckpt), "--steps", "31",
                              "--log-dir", str(data["tmp"] / "damaged-logs")))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"checkpoint {ckpt / 'step_00000030'}: could not be loaded (CheckpointException" in proc.stderr
    assert "if it is damaged" in proc.stderr and "delete that directory to resume from the one before" in proc.stderr


INJECT_INF_GRAD = """
import sys, torch
from trainer_client.cli import main
clip, calls = torch.nn.utils.clip_grad_norm_, [0]
def clip_with_an_inf_gradient(params, *a, **k):  # a bf16 overflow in backward, with a finite loss
    params = list(params)
    if calls[0] == int(sys.argv[1]):
        g = params[0].grad
        (g.to_local() if hasattr(g, "to_local") else g).view(-1)[0] = float("inf")
    calls[0] += 1
    return clip(params, *a, **k)
torch.nn.utils.clip_grad_norm_ = clip_with_an_inf_gradient
main(sys.argv[2:])
"""


def test_a_non_finite_gradient_stops_before_the_step_is_applied_or_saved(data, servers):
    # The inf gradient made the clip factor 0 and the weights NaN, and a checkpoint taken then
    # made every resume fail at its first step.
    ckpt, logs = data["tmp"] / "inf-ckpt", data["tmp"] / "inf-logs"
    args = train_args(data, [servers["A"].url], "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2",
                      "--steps", "6", "--log-dir", str(logs))
    proc = subprocess.run([sys.executable, "-c", INJECT_INF_GRAD, "3", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 3: gradient norm is inf, so the step was not applied" in proc.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000002"]  # none after the bad step
    again = run_cli(args)  # the same command without the fault resumes from step 2 and finishes
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and [m["step"] for m in read_metrics(logs)] == list(range(6))
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in read_metrics(logs))


def test_feedback_policy_amends_a_real_run_and_the_journal_replays_it(data):
    """A real trainer reports per-language loss; the loss-balance policy amends the mixture
    mid-run; the batches trained on are exactly a fresh Sampler's from recipe + journal."""
    from curriculum.amend import plan_regimes, regimes
    from curriculum.journal import Journal, journal_beside
    from curriculum.recipe import load_recipe
    from sampler_server.sampler import Sampler

    run = data["tmp"] / "policy"
    run.mkdir()
    recipe = run / "recipe.toml"
    shutil.copy(data["recipe"], recipe)  # its own journal
    srv = Server(data["manifest"], recipe, 0, run / "server.log",
                 ("--policy", "loss-balance", "--policy-every", "6", "--policy-lookahead", "3", "--amend-token", "t"))
    try:
        srv.wait_ready()
        log_dir = run / "logs"
        proc = run_cli(["train", "--server", srv.url, "--model", "tiny", "--vocab-size", str(data["vocab"]),
                        "--report-every", "2", "--lr", "3e-3", "--log-dir", str(log_dir)])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        dash = httpx.get(srv.url + "/v1/dashboard").json()
    finally:
        srv.kill()
    entries = Journal(journal_beside(recipe)).entries
    assert len(entries) >= 2 and {e.source for e in entries} == {"policy:loss-balance"}
    assert [a["from_step"] for a in dash["amendments"]] == [e.from_step for e in entries]
    for e in entries:  # within the documented bounds: [0.5, 2] x the recipe, and ±20 % a step
        for phase, ch in e.changes.items():
            assert ch.language_weights and all(0.5 <= v <= 2.0 for v in ch.language_weights.values())
    first = entries[0].changes
    (phase, ch), = first.items()
    hot = entries[0].reason.split("highest ")[1].split(":")[0]
    assert ch.language_weights[hot] > 1.0  # probability moved toward the highest-loss language
    regs = regimes(load_recipe(recipe), entries)
    plans = plan_regimes(regs, Sampler(data["manifest"], recipe).manifest)
    i = [p.name for p in regs[0].recipe.phases].index(phase)
    share = lambda plan, k: dict(zip(plan.table["language"].to_list(), plan.table["weight"].to_list()))[k]  # noqa: E731
    assert share(plans[1][i], hot) > share(plans[0][i], hot)
    # Replay without the policy: recipe + manifest + journal give every batch the trainer saw.
    replay = Sampler(data["manifest"], recipe, seed=0, amendments=entries)
    plain = Sampler(data["manifest"], recipe, seed=0)
    seen = read_digests(log_dir, 0)
    assert [s for s, _ in seen] == list(range(TOTAL_STEPS))
    differ = 0
    for step, h in seen:
        b = replay.batch(step)
        assert hashlib.sha256(b.input_ids.tobytes() + b.labels.tobytes()).hexdigest() == h, step
        p = plain.batch(step)
        same = hashlib.sha256(p.input_ids.tobytes() + p.labels.tobytes()).hexdigest() == h
        assert same or step >= entries[0].from_step  # before the first amendment: the recipe's own bytes
        differ += not same
    assert differ > 0
