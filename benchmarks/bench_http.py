"""Tokens/s delivered over loopback HTTP vs a raw loopback socket, measured in the same run.

    NUMBA_THREADING_LAYER=omp python benchmarks/bench_http.py [--seconds 2] [--quick] [--stacks fast,h11]

Starts `sampler-server serve` (a separate process, uvicorn, 127.0.0.1; one per `--stacks` entry:
httptools + uvloop and h11 + asyncio by default) on a random-token corpus
and a one-phase recipe of 8 x 8,192-token batches, and a plain socket server (another process)
that answers each 1-byte request with a buffer of one batch's size (8 x 8,192 x 4 bytes). Clients
(threads of this process) fetch and decode consecutive batches for a fixed time:
- raw socket: bytes/s -> the limit in tokens/s at 4 bytes a token;
- in-process `Sampler.batch` (no HTTP): the assembly rate the server can at most reach;
- `GET /v1/batches/{step}` and `GET /v1/stream` for each wire choice (sparse / dense labels,
  zstd on / off), with 1 and 4 concurrent clients; tokens/s, bytes per token, ratio to the limit;
- small requests: `/healthz`, an 8 x 128-token batch, and a raw 1-byte round trip, latency each.
Every number comes from this run on this machine; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trainer_client import wire  # noqa: E402

B, L = 8, 8192
BIG_STEPS = 20_000
SMALL_STEPS = 5_000


def bench_recipe() -> str:
    """A big-batch phase (8 x 8,192) then a small-batch phase (8 x 128) for per-request overhead."""
    return f"""name = "bench-http"

[[phases]]
name = "big"
tokens = {BIG_STEPS * B * L}
batch_tokens = {B * L}
seq_len = {L}
tau = 0.5
mask_ratio = 0.15

[[phases]]
name = "small"
tokens = {SMALL_STEPS * 8 * 128}
batch_tokens = {8 * 128}
seq_len = 128
tau = 0.3
mask_ratio = 0.15
"""


def bench_inputs(cache: Path, tokens: float = 6.4e7, languages: int = 60) -> tuple[Path, Path]:
    """A cached random-token corpus (long-tailed language sizes) and the benchmark recipe."""
    from curriculum.randomcorpus import write_random_corpus

    corpus = cache / f"http-{languages}-{tokens:.0e}"
    if not (corpus / "manifest.json").exists():
        rng = np.random.default_rng(0)
        w = np.exp(rng.uniform(0, np.log(200), languages))
        sizes = {f"l{i:03d}_Latn": int(tokens * x / w.sum()) for i, x in enumerate(w)}
        write_random_corpus(corpus, sizes, mean_doc_tokens=400, shard_tokens=8 << 20)
    recipe = cache / "bench-http.toml"
    recipe.write_text(bench_recipe())
    # Each benchmark run is a new run: no amendments, watermark or owner left by an earlier one.
    for side in ("", ".run", ".watermark", ".lock"):
        (cache / f"bench-http.amendments.jsonl{side}").unlink(missing_ok=True)
    return corpus, recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(manifest: Path, recipe: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sampler_server.cli", "serve", "--manifest", str(manifest), "--recipe", str(recipe),
         "--port", str(port), "--no-access-log", *extra],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


# -- the raw socket peer ------------------------------------------------------------------------

RAW_SERVER = r"""
import socket, sys, threading
n = int(sys.argv[1]); buf = bytes(range(256)) * (n // 256) + bytes(n % 256)
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind(("127.0.0.1", 0)); ls.listen(64)
print(ls.getsockname()[1], flush=True)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        r = c.recv(1)
        if not r:
            return
        c.sendall(buf if r == b"B" else b"k")
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def raw_clients(port: int, n_bytes: int, clients: int, seconds: float, big: bool = True) -> tuple[float, float]:
    """(bytes/s, requests/s) of `clients` threads each asking for a buffer (or 1 byte) in a loop."""
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        want = n_bytes if big else 1
        out = bytearray(want)
        mv = memoryview(out)
        while time.perf_counter() < stop:
            c.sendall(b"B" if big else b"s")
            got = 0
            while got < want:
                got += c.recv_into(mv[got:])
            done[i] += 1
        c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    n = sum(done)
    return n * (n_bytes if big else 1) / dt, n / dt


# -- HTTP clients ---------------------------------------------------------------------------------

def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {data[:200]!r}")
    return data


def http_clients(url: str, clients: int, seconds: float, *, mode: str, labels: str = "sparse",
                 compression: str = "none", client: str = "http.client", first_step: int = 0, steps: int = BIG_STEPS,
                 stream_count: int = 16) -> dict:
    """Clients (threads, keep-alive connections) fetch + decode consecutive batches, each client
    its own range of steps, for `seconds`. `client`: stdlib http.client or httpx."""
    tokens = [0] * clients
    wire_bytes = [0] * clients
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    span = steps // clients
    host, port = url.removeprefix("http://").split(":")

    def run(i: int) -> None:
        step = first_step + i * span
        q = f"labels={labels}&compression={compression}"
        if client == "httpx":
            hx = httpx.Client(base_url=url, timeout=60)
            fetch = lambda path: hx.get(path).raise_for_status().content  # noqa: E731
        else:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            fetch = lambda path: _get(conn, path)  # noqa: E731
        while time.perf_counter() < stop:
            t = time.perf_counter()
            if mode == "batches":
                data = fetch(f"/v1/batches/{step}?{q}")
                got = [wire.decode(data)]
            elif mode == "stream":
                data = fetch(f"/v1/stream?start={step}&count={stream_count}&{q}")
                got = list(wire.decode_stream(data))
            else:  # the HTTP stack alone: a constant body, nothing to decode
                data = fetch("/blob")
                got = []
                tokens[i] += B * L
            step += max(1, len(got))
            lat.append((time.perf_counter() - t) / max(1, len(got)))
            tokens[i] += sum(w.input_ids.size for w in got)
            wire_bytes[i] += len(data)
            if step + stream_count >= first_step + (i + 1) * span:
                step = first_step + i * span

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": sum(tokens) / dt, "bytes_per_token": sum(wire_bytes) / max(1, sum(tokens)),
            "ms_per_batch": 1e3 * float(np.median(lat)) if lat else float("nan")}


# A FastAPI app under uvicorn that returns a constant body: the same HTTP stack with no work.
BLOB_SERVER = r"""
import socket, sys, uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
body = bytes(int(sys.argv[1]))
app = FastAPI()
@app.get("/blob")
async def blob():
    return Response(body, media_type="application/octet-stream")
sock = socket.socket(); sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, http=sys.argv[2], loop=sys.argv[3])).run(sockets=[sock])
"""


def sampler_rate(manifest: Path, recipe: Path, seconds: float, threads: int) -> float:
    """Tokens/s of `Sampler.batch` in this process (no HTTP, no encoding)."""
    from sampler_server.sampler import Sampler

    s = Sampler(manifest, recipe, seed=0)
    s.batch(0)
    tokens = [0] * threads
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        step = 1 + i * (BIG_STEPS // threads)
        while time.perf_counter() < stop:
            b = s.batch(step)
            tokens[i] += b.input_ids.size
            step += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(tokens) / (time.perf_counter() - t0)


def small_latency(url: str, raw_port: int, n: int) -> list[tuple[str, float]]:
    """Median latency of small requests on one keep-alive connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    out = []
    for name, path in (("GET /healthz (HTTP stack only)", "/healthz"),
                       ("GET /v1/batches, 8 x 128 tokens, decoded", None)):
        ts = []
        for k in range(n):
            t = time.perf_counter()
            if path:
                _get(conn, path)
            else:
                wire.decode(_get(conn, f"/v1/batches/{BIG_STEPS + k % SMALL_STEPS}"))
            ts.append(time.perf_counter() - t)
        out.append((name, 1e6 * float(np.median(ts))))
    _, rps = raw_clients(raw_port, 1, 1, 1.0, big=False)
    out.append(("raw socket, 1-byte round trip", 1e6 / rps))
    return out


# uvicorn stacks the server can run on (`sampler-server serve --http/--loop`).
STACKS = {"fast": ("httptools", "uvloop"), "h11": ("h11", "asyncio")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    ap.add_argument("--quick", action="store_true", help="only sparse/none and sparse/zstd, one stack's small requests")
    ap.add_argument("--stacks", default="fast,h11", help="uvicorn stacks to measure, in this order: fast "
                    "(httptools + uvloop, the default when installed) and/or h11 (h11 + asyncio)")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    args = ap.parse_args()
    stacks = [x.strip() for x in args.stacks.split(",") if x.strip()]
    if not stacks or any(x not in STACKS for x in stacks):
        raise SystemExit(f"--stacks: a comma list of {', '.join(STACKS)}; got {args.stacks!r}")
    manifest, recipe = bench_inputs(Path(args.cache))
    n_bytes = B * L * 4

    raw = subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(n_bytes)], stdout=subprocess.PIPE, text=True)
    raw_port = int(raw.stdout.readline())
    procs: list[subprocess.Popen] = []
    try:
        print(f"cores: {os.cpu_count()}, batch {B} x {L} tokens, {args.seconds:g} s per measurement, 127.0.0.1\n")
        limits = {}
        for c in (1, 4):
            bps, _ = raw_clients(raw_port, n_bytes, c, args.seconds)
            limits[c] = bps / 4
            print(f"raw socket, {c} client(s): {bps / 1e9:.2f} GB/s -> limit {limits[c] / 1e6:.0f}M tokens/s")
        for t in (1, 2):
            r = sampler_rate(manifest, recipe, args.seconds, t)
            print(f"Sampler.batch in process, {t} thread(s): {r / 1e6:.0f}M tokens/s ({r / limits[1]:.2f}x the 1-client limit)")
        servers = {}
        for name in stacks:
            http_impl, loop_impl = STACKS[name]
            server, url = start_server(manifest, recipe, "--http", http_impl, "--loop", loop_impl)
            procs.append(server)
            servers[name] = url
            http_clients(url, 2, 1.0, mode="batches")  # warm: kernels, shard maps
        # Size the blob peer like a sparse batch.
        size = len(_get(http.client.HTTPConnection(*servers[stacks[0]].removeprefix("http://").split(":")), "/v1/batches/1"))
        for name in stacks:
            blob = subprocess.Popen([sys.executable, "-c", BLOB_SERVER, str(size), *STACKS[name]], stdout=subprocess.PIPE,
                                    text=True)
            procs.append(blob)
            blob_url = f"http://127.0.0.1:{int(blob.stdout.readline())}"
            time.sleep(1.0)
            for c in (1, 4):
                r = http_clients(blob_url, c, args.seconds, mode="blob")
                print(f"uvicorn ({' + '.join(STACKS[name])}) + FastAPI, constant {size / 1e3:.0f} KB body (no work), "
                      f"{c} client(s): {r['tokens_per_s'] / 1e6:.0f}M tokens/s ({r['tokens_per_s'] / limits[c]:.2f}x)")
            blob.kill()
        print()
        # The raw socket's rate moves with the machine's load (1.7-5.3 GB/s between runs minutes
        # apart here), so it is measured again before every row; one short sample is noisy too, so
        # rows are set against the median of all of the run's samples (the row's own is shown).
        raw_samples: dict[int, list[float]] = {1: [limits[1]], 4: [limits[4]]}
        table: list[tuple[str, int, dict]] = []
        choices = [("sparse", "none"), ("sparse", "zstd")] if args.quick else \
            [("sparse", "none"), ("dense", "none"), ("sparse", "zstd"), ("dense", "zstd")]
        runs = [(m, lab, comp, "http.client", c) for m in ("batches", "stream") for lab, comp in choices for c in (1, 4)]
        runs += [("batches", "sparse", "none", "httpx", 1), ("stream", "sparse", "none", "httpx", 1)]
        # Stacks alternate run by run, so that a change in the machine's load hits both alike.
        for mode, labels, comp, client, c in runs:
            for name in stacks:
                limit = raw_clients(raw_port, n_bytes, c, max(0.5, args.seconds / 2))[0] / 4
                raw_samples[c].append(limit)
                r = http_clients(servers[name], c, args.seconds, mode=mode, labels=labels, compression=comp,
                                 client=client)
                row = (f"| {name} | {'/v1/batches' if mode == 'batches' else '/v1/stream (16)'} | {labels} | {comp} "
                       f"| {client} | {c} | {r['tokens_per_s'] / 1e6:.1f}M | {r['bytes_per_token']:.2f} "
                       f"| {r['ms_per_batch']:.2f} | {limit / 1e6:.0f}M")
                table.append((row, c, r))
        median = {c: float(np.median(xs)) for c, xs in raw_samples.items()}
        print("| stack | endpoint | labels | compression | client | clients | tokens/s | bytes/token | ms/batch (p50) "
              "| raw sample before it | vs the run's median raw limit |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row, c, r in table:
            print(f"{row} | {r['tokens_per_s'] / median[c]:.3f}x |")
        for c, xs in raw_samples.items():
            print(f"raw socket limit over the run, {c} client(s): {min(xs) / 1e6:.0f}-{max(xs) / 1e6:.0f}M tokens/s "
                  f"(median {np.median(xs) / 1e6:.0f}M, {len(xs)} measurements)")
        for name in stacks[:1] if args.quick else stacks:
            print(f"\nper-request latency, small requests, {name} stack (median of 300, one client):")
            for what, us in small_latency(servers[name], raw_port, 300):
                print(f"  {what}: {us:.0f} us")
    finally:
        for p in procs:
            p.terminate()
        raw.kill()
        for p in procs:
            p.wait(15)


if __name__ == "__main__":
    main()
