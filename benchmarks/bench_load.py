"""Load: many concurrent clients asking for random steps; errors, latency and server memory.

    NUMBA_THREADING_LAYER=omp python benchmarks/bench_load.py [--clients 32] [--requests 20]

Starts `sampler-server serve` (one uvicorn worker, 127.0.0.1) on the random-token corpus of
bench_http.py, then `--clients` threads each send `--requests` `GET /v1/batches/{step}` for random
steps, ranks and world sizes (1, 2, 4, 8) over their own keep-alive connection, and decode every
response. An error is a non-200, a transport failure, or a decoded batch that differs from
`Sampler.batch` in this process (checked for every `--check`-th response). Prints errors, p50 /
p99 / max latency, throughput and the server's RSS before the load and after each of `--rounds`
rounds (new random steps each round: the caches fill in the first, then RSS stays flat). Bounded
by `--timeout`.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import BIG_STEPS, SMALL_STEPS, bench_inputs, start_server  # noqa: E402

from trainer_client import wire  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--check", type=int, default=5, help="compare every N-th response with Sampler.batch")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the whole load; RSS is read after each")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    args = ap.parse_args()
    manifest, recipe = bench_inputs(Path(args.cache))
    server, url = start_server(manifest, recipe)
    from sampler_server.sampler import Sampler

    reference = Sampler(manifest, recipe, seed=0)
    host, port = url.removeprefix("http://").split(":")
    proc = psutil.Process(server.pid)
    before = proc.memory_info()
    lat: list[float] = []
    errors: list[str] = []
    checked = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + args.timeout
    total_steps = BIG_STEPS + SMALL_STEPS

    def client(i: int, rnd: int) -> None:
        rng = random.Random(i + 1000 * rnd)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for k in range(args.requests):
            if time.monotonic() > deadline:
                with lock:
                    errors.append(f"client {i}: timed out before request {k}")
                return
            step, world = rng.randrange(total_steps), rng.choice((1, 2, 4, 8))
            rank = rng.randrange(world)
            path = f"/v1/batches/{step}?rank={rank}&world_size={world}"
            t = time.perf_counter()
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                data = r.read()
                dt = time.perf_counter() - t
                if r.status != 200:
                    raise RuntimeError(f"{r.status} {data[:120]!r}")
                w = wire.decode(data)
                if (i * args.requests + k) % args.check == 0:
                    b = reference.batch(step, rank, world)
                    if w.input_ids.tobytes() != b.input_ids.tobytes() or w.labels.tobytes() != b.labels.tobytes() \
                            or w.cu_seqlens.tobytes() != b.cu_seqlens.tobytes():
                        raise RuntimeError("decoded batch differs from Sampler.batch")
                    with lock:
                        checked[0] += 1
            except Exception as exc:  # a benchmark counts every failure, whatever it is
                with lock:
                    errors.append(f"client {i} GET {path}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                continue
            with lock:
                lat.append(dt)

    wall = 0.0
    after = []
    for rnd in range(args.rounds):  # new random steps each round: caches fill, then RSS stays flat
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i, rnd)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall += time.perf_counter() - t0
        after.append(proc.memory_info())
    server.terminate()
    server.wait(15)

    ms = np.array(lat) * 1e3
    n = args.clients * args.requests * args.rounds
    print(f"{args.rounds} rounds of {args.clients} clients x {args.requests} requests = {n} GET /v1/batches "
          f"(random step, rank, world size 1-8), "
          f"{os.cpu_count()} cores, 127.0.0.1")
    print(f"errors: {len(errors)} (checked {checked[0]} responses byte for byte against Sampler.batch)")
    for e in errors[:10]:
        print("  " + e)
    if ms.size:
        print(f"latency ms: p50 {np.percentile(ms, 50):.1f}  p90 {np.percentile(ms, 90):.1f}  "
              f"p99 {np.percentile(ms, 99):.1f}  max {ms.max():.1f}")
    print(f"throughput: {len(lat) / wall:.0f} requests/s over {wall:.1f} s")
    # `shared` is file-backed resident memory: mostly pages of the memory-mapped shards, which the
    # kernel can drop at will; the rest is the process's own (anonymous) memory.
    for name, m in (("before", before), *((f"after round {k + 1}", m) for k, m in enumerate(after))):
        print(f"server RSS {name}: {m.rss / 2**20:.0f} MB ({m.shared / 2**20:.0f} MB file-backed, "
              f"{(m.rss - m.shared) / 2**20:.0f} MB anonymous)")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
