"""Full-scale dry run: mmBERT's recipe (3 phases, ~3T tokens, 1,833 languages) on a virtual corpus
of `curriculum synth --languages 1833 --total-tokens 3e12`: nothing of 12 TB is stored, the real
index, blend, shuffle, pack and mask run. Prints index build time and size on disk, RSS, cold
start, p50/p99 batch latency at random steps in each phase, the epochs per language the plan
implies, and the projection to a 1,024-GPU run.

    python benchmarks/bench_scale.py [--requests 100] [--cache .cache/bench]   # the index goes under --cache
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100, help="random steps timed per phase")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    ap.add_argument("--fresh-index", action="store_true", help="rebuild the index even if cached")
    ap.add_argument("--gpus", type=int, default=1024)
    ap.add_argument("--tokens-per-gpu", type=float, default=110e3, help="training throughput per GPU (mmBERT base on H100)")
    args = ap.parse_args()
    from curriculum.synth import synth_long_tail
    from sampler_server.sampler import Sampler

    proc = psutil.Process()
    manifest = Path(args.cache) / "synth-1833-3e12"
    if not (manifest / "manifest.json").exists():
        synth_long_tail(manifest, 1833, 3e12)
    recipe = ROOT / "manifests" / "recipes" / "mmbert.toml"
    index = Path(args.cache) / "index-mmbert"
    if args.fresh_index and index.exists():
        shutil.rmtree(index)

    rss0 = proc.memory_info().rss
    t = time.perf_counter()
    s = Sampler(manifest, recipe, seed=0, index_dir=index)
    init = time.perf_counter() - t
    t = time.perf_counter()
    info = s.build_index()
    print(f"index: {info['files']} segment files, {info['bytes'] / 2**20:.1f} MB on disk, built/loaded in {info['seconds']:.1f} s "
          f"(sampler init {init:.2f} s)")

    t = time.perf_counter()
    s2 = Sampler(manifest, recipe, seed=0, index_dir=index)
    b = s2.batch(s2.total_steps - 1, 0, 8)
    cold = time.perf_counter() - t
    print(f"cold start with the index on disk, to the first batch of the last step: {cold:.2f} s")
    print(f"steps: {s.total_steps:,} (pretrain {s.timeline.layouts[0].steps:,}, of which warm-up {s.timeline.layouts[0].warm_steps:,})")

    rng = np.random.default_rng(0)
    print("\n| phase | per-rank batch | p50 (ms) | p99 (ms) | tokens/s |")
    print("|---|---|---|---|---|")
    for p, plan in enumerate(s.plans):
        start, n = s.timeline.phase_start[p], s.timeline.layouts[p].steps
        warm = s.timeline.layouts[p].warm_steps
        steps = rng.integers(start + warm, start + n, args.requests)
        for world in (576, 8):  # 8 sequences a rank (4,608 / 576), and 8 ranks x 576 sequences
            per = plan.phase.batch_sequences // world
            if per * plan.phase.seq_len > 600_000:
                per_steps = steps[: max(5, args.requests // 10)]
            else:
                per_steps = steps
            lat = []
            for st in per_steps:
                r = int(rng.integers(0, world))
                t = time.perf_counter()
                s.batch(int(st), r, world)
                lat.append(time.perf_counter() - t)
            lat = np.array(lat) * 1e3
            print(f"| {plan.phase.label} | {per} x {plan.phase.seq_len} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} "
                  f"| {per * plan.phase.seq_len / np.mean(lat) * 1e3 / 1e6:.1f}M |")
    print(f"\nRSS: {proc.memory_info().rss / 2**20:.0f} MB (start {rss0 / 2**20:.0f} MB)")

    print("\nepochs per language implied by the plan:")
    for plan in s.plans:
        e = plan.table["epochs"].to_numpy()
        print(f"  {plan.phase.label}: {plan.table.height} languages, median {np.median(e):.3g}, max {e.max():.3g}, "
              f"{(e > 5).sum()} above 5 epochs")

    # Projection: 1,024 GPUs at mmBERT's ~110k tokens/s each; the global batch of 8,192-token
    # sequences must split evenly, so 4 sequences a GPU (global 4,096) — 4,608 does not divide by 1,024.
    tok_s = args.gpus * args.tokens_per_gpu
    for L in (1024, 8192):
        per = 4 * (8192 // L)
        step_s = args.gpus * per * L / tok_s
        req_s = args.gpus / step_s
        print(f"\nprojection, {args.gpus} GPUs, seq {L}: {per} sequences a GPU, a step every {step_s:.2f} s, "
              f"{req_s:,.0f} requests/s and {tok_s / 1e6:.0f}M tokens/s in all")


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
    main()
