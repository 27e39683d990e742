"""Sampler.batch end to end (index lookups + shard reads + pack + mask) on a 1,833-language
random-token corpus: cold start, p50/p99 latency at random steps, tokens/s and RSS.

    python benchmarks/bench_sampler.py [--tokens 1e8] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import psutil

from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import parse_recipe
from curriculum.synth import long_tail_tokens, mmbert_language_order

ROOT = Path(__file__).resolve().parents[1]


def recipe(shape: tuple[int, int]) -> dict:
    b, L = shape
    # mmBERT's three phases, scaled so each has thousands of steps at this batch shape.
    return {
        "name": f"mmbert-bench-{b}x{L}",
        "phases": [
            {"name": "pretrain", "tokens": 4000 * b * L, "batch_tokens": b * L, "seq_len": L, "languages": {"top": 60}, "tau": 0.7, "mask_ratio": 0.3},
            {"name": "midtrain", "tokens": 1000 * b * L, "batch_tokens": b * L, "seq_len": L, "languages": {"top": 110}, "tau": 0.5, "mask_ratio": 0.15},
            {"name": "decay", "tokens": 500 * b * L, "batch_tokens": b * L, "seq_len": L, "languages": "all", "tau": 0.3, "mask_ratio": 0.05},
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=float, default=1e8, help="corpus size in tokens")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    args = ap.parse_args()
    corpus = Path(args.cache) / f"random-1833-{args.tokens:.0e}"
    if not (corpus / "manifest.json").exists():
        t = time.perf_counter()
        keys = mmbert_language_order()[:1833]
        sizes = np.maximum(long_tail_tokens(1833, args.tokens), 64)
        write_random_corpus(corpus, dict(zip(keys, sizes.tolist())), mean_doc_tokens=400, shard_tokens=16 << 20)
        print(f"wrote corpus {corpus} in {time.perf_counter() - t:.1f}s")
    from sampler_server.sampler import Sampler

    proc = psutil.Process()
    print("| batch | access | cold start (s) | first batch (ms) | p50 (ms) | p99 (ms) | tokens/s | RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in ((8, 8192), (64, 1024)):
        t0 = time.perf_counter()
        s = Sampler(corpus, parse_recipe(recipe(shape)), seed=0)
        cold = time.perf_counter() - t0
        t1 = time.perf_counter()
        s.batch(0)
        first = time.perf_counter() - t1
        rng = np.random.default_rng(0)
        # Warm the far checkpoints once (a server pays this once per process) on 20 steps of their
        # own, then time other random steps.
        for st in rng.integers(0, s.total_steps, 20):
            s.batch(int(st))
        steps = rng.integers(0, s.total_steps, args.requests)
        start = int(rng.integers(0, s.total_steps - args.requests))
        for access, order in (("random", steps), ("sequential", np.arange(start, start + args.requests))):
            lat = []
            for st in order:
                t = time.perf_counter()
                s.batch(int(st))
                lat.append(time.perf_counter() - t)
            lat = np.array(lat) * 1e3
            tps = shape[0] * shape[1] / (np.mean(lat) / 1e3)
            print(
                f"| {shape[0]}x{shape[1]} | {access} | {cold:.2f} | {first * 1e3:.1f} | {np.percentile(lat, 50):.2f} "
                f"| {np.percentile(lat, 99):.2f} | {tps / 1e6:.1f}M | {proc.memory_info().rss / 2**20:.0f} |"
            )


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
    main()
