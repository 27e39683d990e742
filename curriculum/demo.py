"""`make demo`: the main job on the embedded default, end to end as far as it exists.

1. the embedded real multilingual corpus (gflanguages' UDHR samples, 548 languages, part of it
   unlabeled) → a tokenizer trained offline → `curriculum build` (real fastText LID, MinHash dedup,
   shards) → `curriculum verify` → `curriculum inspect` → `curriculum plan demo.toml`;
2. `sampler-server serve --policy loss-balance` on the built manifest in the background, and
   `trainer-client train`: a tiny ModernBERT on two CPU ranks (FSDP2, gloo) through the three demo
   phases (258 steps), printing the loss per phase and the dashboard URL. The feedback policy
   amends the mixture from the per-language loss the trainer reports; afterwards the journal is
   printed, the amended plan is shown beside the original, and a Sampler built from recipe +
   manifest + journal alone (no policy) is checked to replay the batches the server served;
3. a full-scale synthetic manifest (1,833 languages, 3T tokens) planned with the published
   mmBERT recipe, as a table and as a self-contained HTML report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> None:
    print(f"\n$ curriculum {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "curriculum.cli", *args], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sampler-server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"sampler-server at {url} not ready after {timeout:.0f} s; see {log}")


def _train(out: Path, built: Path) -> None:
    """Serve the built demo manifest and train the tiny model on two CPU ranks through all phases."""
    train_dir = out / "train"
    shutil.rmtree(train_dir, ignore_errors=True)
    train_dir.mkdir(parents=True)
    vocab = json.loads((built / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = train_dir / "server.log"
    recipe = train_dir / "demo.toml"  # a copy: the amendment journal is written beside it
    shutil.copy(ROOT / "manifests" / "recipes" / "demo.toml", recipe)
    policy = ["--policy", "loss-balance", "--policy-every", "40", "--policy-lookahead", "10"]
    print(f"\n$ sampler-server serve --manifest {built} --recipe {recipe} --port {port} {' '.join(policy)} &", flush=True)
    with open(log, "wb") as logf:
        server = subprocess.Popen(
            [sys.executable, "-m", "sampler_server.cli", "serve", "--manifest", str(built), "--recipe", str(recipe),
             "--host", "127.0.0.1", "--port", str(port), "--progress-log", str(train_dir / "progress.jsonl"),
             "--no-access-log", *policy],
            stdout=logf, stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, server, log)
        print(f"dashboard (live while training): {url}/", flush=True)
        args = ["train", "--server", url, "--model", "tiny", "--vocab-size", str(vocab), "--nproc-per-node", "2",
                "--checkpoint-dir", str(train_dir / "ckpt"), "--checkpoint-every", "100",
                "--log-dir", str(train_dir / "logs"), "--report-every", "20",
                "--summary", str(train_dir / "summary.json"), "--run-name", "demo"]
        print(f"\n$ trainer-client {' '.join(args)}", flush=True)
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "trainer_client.cli", *args], check=True)
        print(f"trained {len(json.loads((train_dir / 'summary.json').read_text())['losses'])} steps in "
              f"{time.time() - t0:.0f} s; dashboard was {url}/ (progress kept in {train_dir / 'progress.jsonl'}: "
              f"`sampler-server serve ... --progress-log` shows it again)", flush=True)
        _check_replay(url, built, recipe)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _check_replay(url: str, built: Path, recipe: Path) -> None:
    """The policy's amendments are in the journal; recipe + manifest + journal replay the served bytes."""
    from curriculum.journal import Journal, journal_beside
    from sampler_server.sampler import Sampler
    from trainer_client.client import SamplerClient

    entries = Journal(journal_beside(recipe)).entries
    print(f"\nfeedback policy: {len(entries)} amendment(s) in {journal_beside(recipe)}", flush=True)
    for a in entries:
        print(f"  from step {a.from_step}: {a.reason}", flush=True)
    replay = Sampler(built, recipe, seed=0, amendments=entries)
    client = SamplerClient([url])
    steps = sorted({s for a in entries for s in (a.from_step - 1, a.from_step, a.from_step + 1)} | {0})
    steps = [s for s in steps if 0 <= s < replay.total_steps]
    for s in steps:
        w, b = client.get_batch(s, 1, 2), replay.batch(s, 1, 2)
        if w.input_ids.tobytes() != b.input_ids.tobytes() or w.labels.tobytes() != b.labels.tobytes():
            raise SystemExit(f"replay from the journal differs from the served batch at step {s}")
    client.close()
    print(f"replay without the policy: {len(steps)} batches around the amendments byte-identical to the served ones",
          flush=True)
    if entries:
        _run("plan", str(recipe), "--manifest", str(built), "--journal", "-", "--top", "6")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-out", help="Working directory for the demo's outputs.")
    ap.add_argument("--no-train", action="store_true", help="Skip serving and training (the full-scale synthetic plan still runs).")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus, tok, built = out / "corpus", out / "tokenizer.json", out / "manifest"
    _run("demo-corpus", str(corpus))
    if not tok.exists():
        _run("tokenizer", "train", str(corpus), "--out", str(tok), "--vocab-size", "8000")
    # The demo builds from scratch every time: demo-corpus has just rewritten the input files (new
    # mtimes), so the work a previous run left would be refused as another build's.
    shutil.rmtree(built, ignore_errors=True)
    _run("build", str(corpus), "--out", str(built), "--tokenizer", str(tok), "--workers", "2")
    _run("verify", str(built))
    _run("inspect", str(built), "--top", "12")
    _run("plan", str(ROOT / "manifests" / "recipes" / "demo.toml"), "--manifest", str(built), "--top", "6",
         "--html", str(out / "plan-demo.html"))
    if not args.no_train:
        _train(out, built)
    recipe = str(ROOT / "manifests" / "recipes" / "mmbert.toml")
    synth = out / "synth-1833"
    _run("synth", "--languages", "1833", "--total-tokens", "3e12", "--out", str(synth))
    _run("plan", recipe, "--manifest", str(synth), "--top", "8", "--html", str(out / "plan-mmbert.html"))
    print(f"\ndemo done: open {out / 'plan-demo.html'} and {out / 'plan-mmbert.html'} in a browser", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
