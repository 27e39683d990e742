"""Trainer client: how long the train loop waits for data, and what decoding a batch costs.

1. Data wait, in one process: the tiny model trains on the demo recipe's batches (32 x 128, then
   16 x 256 across the phase boundary) from a local `sampler-server`; the fraction of step time
   spent waiting for the next batch, with `SamplerDataset` (background prefetch) vs the peer, a
   loop that fetches each batch when it needs it (`GET /v1/batches/{step}`, no overlap); after an
   untimed warm-up, two rounds in alternating order (ours, peer, peer, ours).
2. Data wait of the real thing: `trainer-client train --nproc-per-node 2` (FSDP2, gloo), read
   from its metrics log (the first steps, which include start-up, are left out).
3. Decode cost per batch (wire bytes → torch tensors) at the demo's and mmBERT's per-rank
   shapes, vs the peer a plain JSON API would need (`json.loads` + `torch.tensor`).

    python benchmarks/bench_trainer.py [--steps 50] [--manifest DIR --vocab-size V]

Without --manifest it writes a random-token corpus (100 languages) under .cache/bench; the demo
manifest works too (`--manifest demo-out/manifest --vocab-size 8000`). Both share this machine's
cores with the server, as `make demo` does.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "manifests" / "recipes" / "demo.toml"
ENV = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")),
           NUMBA_THREADING_LAYER=os.environ.get("NUMBA_THREADING_LAYER", "omp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_manifest(cache: Path) -> tuple[Path, int]:
    from curriculum.randomcorpus import RANDOM_TOKENIZER, write_random_corpus

    # The demo tokenizer's vocabulary (8,000): the tiny model's step time is then the demo's.
    tok = RANDOM_TOKENIZER.model_copy(update={"vocab_size": 8000, "name": "random-8000"})
    out = cache / "trainer-random-100-v8000"
    if not (out / "manifest.json").exists():
        rng = np.random.default_rng(0)
        sizes = {f"l{i:03d}_Latn": int(s) for i, s in enumerate(np.exp(rng.uniform(np.log(5e3), np.log(2e5), 100)))}
        write_random_corpus(out, sizes, seed=1, mean_doc_tokens=120, shard_tokens=1 << 20, tokenizer=tok)
    return out, tok.vocab_size


def start_server(manifest: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = tempfile.TemporaryFile()
    # A fresh amendment journal per run: one beside the repo's recipe would bind it to this corpus.
    journal = Path(tempfile.mkdtemp(prefix="bench-trainer-")) / "demo.amendments.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "sampler_server.cli", "serve", "--manifest", str(manifest), "--recipe",
                             str(RECIPE), "--journal", str(journal), "--host", "127.0.0.1", "--port", str(port),
                             "--no-access-log"],
                            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    log.seek(0)
    raise SystemExit(f"sampler-server on {manifest} did not become ready:\n{log.read().decode()[-2000:]}")


def wait_fractions(url: str, vocab: int, start: int, steps: int) -> dict[str, list[float]]:
    """In-process loop, prefetching dataset vs fetch-on-demand; the same steps, model and optimizer.

    An untimed warm-up pass trains first (torch's first steps, the server's first batches), then
    two rounds in alternating order (ours, peer, peer, ours), so neither side always runs first on a
    cold process. Returns each method's wait shares, one per round."""
    from trainer_client.client import SamplerClient
    from trainer_client.dataset import SamplerDataset, to_train_batch
    from trainer_client.model import TokenizerSpec, build_model

    def step_fn(model, opt, b) -> None:
        loss = model(b.input_ids, b.labels, b.cu_seqlens, b.max_seqlen).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def run(name: str, n: int, timed: bool) -> float:
        model = build_model("tiny", TokenizerSpec(vocab, 0, 2, 3, 4), attn="sdpa", seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        client = SamplerClient(url)
        wait = total = 0.0
        warm = 2  # the first steps pay for connection set-up and first-call overheads
        if name.startswith("on-demand"):
            for i, s in enumerate(range(start, start + n)):
                t0 = time.perf_counter()
                b = to_train_batch(client.get_batch(s))
                t1 = time.perf_counter()
                step_fn(model, opt, b)
                if i >= warm:
                    wait, total = wait + t1 - t0, total + time.perf_counter() - t0
        else:
            ds = SamplerDataset(url, 0, 1, start_step=start, stop_step=start + n, prefetch=4, client=client)
            it = iter(ds)
            for i in range(n):
                t0 = time.perf_counter()
                b = next(it)
                t1 = time.perf_counter()
                step_fn(model, opt, b)
                if i >= warm:
                    wait, total = wait + t1 - t0, total + time.perf_counter() - t0
        client.close()
        if timed:
            print(f"  {name:<28} data wait {wait / total:7.2%} of {total:6.2f} s = {wait * 1e3:7.1f} ms "
                  f"({n - warm} steps)", flush=True)
        return wait / total

    ours, peer = "SamplerDataset prefetch=4", "on-demand fetch (peer)"
    run(peer, min(steps, 12), timed=False)  # warm-up, untimed
    out: dict[str, list[float]] = {ours: [], peer: []}
    for name in (ours, peer, peer, ours):
        out[name].append(run(name, steps, timed=True))
    return out


def cli_wait_fraction(url: str, vocab: int, start: int, steps: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "trainer_client.cli", "train", "--server", url, "--model", "tiny",
               "--vocab-size", str(vocab), "--nproc-per-node", "2", "--start-step", str(start), "--steps",
               str(start + steps), "--log-dir", d, "--report-every", "1000"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()][2:]
    return sum(r["data_wait"] for r in rows) / sum(r["step_time"] for r in rows), wall


def synthetic_batch(B: int, L: int, ratio: float, vocab: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (B, L), dtype=np.int32)
    labels = np.where(rng.random((B, L)) < ratio, ids, -100).astype(np.int32)
    starts = {r * L for r in range(B)} | {int(x) for x in rng.integers(0, B * L, max(1, B * L // 400))}
    cu = np.array(sorted(starts | {B * L}), np.int32)
    return SimpleNamespace(input_ids=ids, labels=labels, cu_seqlens=cu, lang=rng.integers(0, 50, B, dtype=np.int32))


def decode_costs() -> None:
    from trainer_client import wire
    from trainer_client.dataset import to_train_batch

    langs = [f"l{i:03d}_Latn" for i in range(50)]
    info = SimpleNamespace(step=0, phase="p", phase_index=0, tau=0.7, mask_ratio=0.3, seq_len=0, lr_factor=1.0,
                           global_batch=0, tokens_before=0)
    print("\n| batch (per rank) | mask | wire bytes | decode → tensors (µs) | JSON bytes | json.loads + torch.tensor (µs) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for B, L, ratio, vocab in ((32, 128, 0.30, 8000), (16, 256, 0.15, 8000), (72, 1024, 0.30, 256_000), (9, 8192, 0.05, 256_000)):
        b = synthetic_batch(B, L, ratio, vocab, seed=B)
        info.seq_len, info.global_batch = L, B
        data = wire.encode([(b, wire.batch_metadata("x", info, 0, 1))], langs)
        n = max(5, int(2e6 // (B * L)))
        t0 = time.perf_counter()
        for _ in range(n):
            tb = to_train_batch(wire.decode(data))
        ours = (time.perf_counter() - t0) / n
        assert tb.input_ids.numpy().tobytes() == b.input_ids.tobytes()
        body = json.dumps({"input_ids": b.input_ids.tolist(), "labels": b.labels.tolist(),
                           "cu_seqlens": b.cu_seqlens.tolist(), "lang": b.lang.tolist()})
        m = max(2, n // 20)
        t0 = time.perf_counter()
        for _ in range(m):
            d = json.loads(body)
            _ = (torch.tensor(d["input_ids"], dtype=torch.int32), torch.tensor(d["labels"], dtype=torch.int32),
                 torch.tensor(d["cu_seqlens"], dtype=torch.int32), torch.tensor(d["lang"], dtype=torch.int32))
        peer = (time.perf_counter() - t0) / m
        print(f"| {B} x {L} | {ratio:.0%} | {len(data):,} | {ours * 1e6:,.0f} | {len(body):,} | {peer * 1e6:,.0f} | "
              f"{peer / ours:,.0f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50, help="steps per measurement")
    ap.add_argument("--start", type=int, default=120, help="first step (120: crosses the boundary at 147)")
    ap.add_argument("--manifest", type=Path, default=None)
    ap.add_argument("--vocab-size", type=int, default=None)
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = ap.parse_args()
    if args.manifest is None:
        manifest, vocab = random_manifest(args.cache)
    else:
        manifest, vocab = args.manifest, args.vocab_size
        if vocab is None:
            raise SystemExit("--manifest needs --vocab-size (manifest.json: tokenizer.vocab_size)")
    torch.set_num_threads(os.cpu_count() or 1)
    proc, url = start_server(manifest)
    try:
        print(f"tiny model, demo recipe steps {args.start}..{args.start + args.steps - 1}, server {url}, "
              f"{os.cpu_count()} cores shared with it")
        fr = wait_fractions(url, vocab, args.start, args.steps)
        peer, ours = np.mean(fr["on-demand fetch (peer)"]), np.mean(fr["SamplerDataset prefetch=4"])
        print(f"  mean of two rounds: prefetch {ours:.2%}, on demand {peer:.2%} of step time: prefetch cuts the "
              f"wait {peer / max(ours, 1e-9):.1f}x (goal: < 2% of step time)")
        frac, wall = cli_wait_fraction(url, vocab, args.start, args.steps)
        print(f"  trainer-client train, 2 ranks FSDP2/gloo: data wait {frac:.2%} of step time "
              f"({args.steps} steps in {wall:.1f} s wall incl. start-up)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    decode_costs()


if __name__ == "__main__":
    main()
