"""`curriculum build` throughput vs tokenizing alone (same text, same run), and peak RSS on a big file.

    python benchmarks/bench_build.py [--mb 40] [--reps 2] [--big-gb 2] [--big-shard-mb 256] [--quick] [--skip-big]

Part 1, throughput. Text: real words of the 30 languages that lid.176 knows well
(`curriculum.democorpus.UNLABELED`; gflanguages' sample texts) recombined into distinct documents:
random spans of 1–4 consecutive words (1–4 characters for scripts without spaces), ~2 KB median
(log-normal lengths, 200 B–20 KB), so no document is a near-copy of another and the dedup keeps
them all. The same documents are written twice:
- LABELED: FineWeb-2-style `lang/train/000.parquet` (no language ID needed);
- UNLABELED: 16 mixed-language `web-NNN.jsonl.zst` files (language ID: 200 characters, then 600 where unsure).
Each is built with `curriculum.build.build(BuildConfig(...), workers=N)` and the wall time compared
with the peer, `load_tokenizer(path).encode_batch` over the same documents in batches of 2,048 with
the same cores: 1 worker / 1 thread (tokenizer and numba pinned to one thread) vs one thread;
1 worker with its default threads (all cores) vs two tokenizer threads; 2 workers vs two
processes tokenizing half each. Throughput = UTF-8 MB of document text per second; best of --reps,
build and peer alternated so both see the same machine load. `ratio` = build / tokenize-only
throughput (goal >= 0.8); `pool warm s` is when the 2-worker build's pool process had warmed up
(imports, kernels, tokenizer) and could take tasks: until then the build's own process works
alone, a cost that a corpus of tens of MB does not amortize and one of GBs does. The fixed cost
of a build (discovery, manifest; the time of a build of one small file, which starts no pool
process) is printed first. A "components" line times each library step on one core (read,
normalize, LID on the prefix, MinHash signatures, tokenize).

Part 2, memory. One `.jsonl.zst` of --big-gb GB of uncompressed JSON lines in four languages
labeled by a `language` field (so LID cost stays out), cached under .cache/bench/. It is built with
`python -m curriculum.cli build --workers 2` in a subprocess while the memory of the process tree
(the CLI and its workers) is sampled every 0.1 s from /proc/PID/smaps_rollup: PSS summed (shared
library pages counted once), RSS summed, and anonymous memory (what the processes allocated; the
rest of RSS is file-backed: libraries and memory-mapped Arrow files, clean page cache), with the
peak per stage and per process, and the footprint of a fresh process that loaded the same code.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from curriculum.build import BuildReport
    from curriculum.tokenize import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402

BATCH = 2048  # documents per encode_batch call, as curriculum.build.tokenize_task does
BIG_LANGS = ("fra_Latn", "rus_Cyrl", "hin_Deva", "jpn_Jpan")
CACHE = ROOT / ".cache" / "bench"


# -- text ---------------------------------------------------------------------------------------


def span_pools(langs: tuple[str, ...]) -> dict[str, tuple[np.ndarray, str, float]]:
    """Per language: an object array of 1–4-unit spans of its real text, the joiner, mean span length."""
    from curriculum.dedup import uses_char_shingles
    from curriculum.democorpus import demo_documents

    docs = demo_documents()
    pools = {}
    for lang in langs:
        text = " ".join(docs[lang])
        char_mode = uses_char_shingles(lang)
        units = [c for c in text if not c.isspace()] if char_mode else text.split()
        sep = "" if char_mode else " "
        spans = [sep.join(units[i : i + k]) for k in (1, 2, 3, 4) for i in range(len(units) - k + 1)]
        arr = np.array(spans, dtype=object)
        pools[lang] = (arr, sep, float(np.mean([len(s) + len(sep) for s in spans])))
    return pools


def make_docs(pools: dict[str, tuple[np.ndarray, str, float]], rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n (language, text) documents, languages uniform, ~2,000-character median length."""
    langs = list(pools)
    which = rng.integers(0, len(langs), n)
    chars = np.clip(rng.lognormal(np.log(2000), 0.7, n), 200, 20_000)
    out = []
    for li, c in zip(which.tolist(), chars.tolist()):
        arr, sep, mean = pools[langs[li]]
        out.append((langs[li], sep.join(arr[rng.integers(0, len(arr), max(1, round(c / mean)))])))
    return out


def write_corpus(root: Path, docs: list[tuple[str, str]], n_jsonl: int = 16) -> tuple[Path, Path]:
    """The same documents as labeled Parquet folders and as unlabeled mixed JSONL.zst files."""
    import polars as pl
    import zstandard

    labeled, unlabeled = root / "labeled", root / "unlabeled"
    by_lang: dict[str, list[str]] = {}
    for lang, text in docs:
        by_lang.setdefault(lang, []).append(text)
    for lang, texts in sorted(by_lang.items()):
        d = labeled / lang / "train"
        d.mkdir(parents=True)
        pl.DataFrame({"text": texts}).write_parquet(d / "000.parquet")
    unlabeled.mkdir(parents=True)
    cctx = zstandard.ZstdCompressor(level=3)
    for k in range(n_jsonl):
        lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for _, t in docs[k::n_jsonl])
        (unlabeled / f"web-{k:03d}.jsonl.zst").write_bytes(cctx.compress(lines.encode("utf-8")))
    return labeled, unlabeled


# -- the tokenizer-only peer ----------------------------------------------------------------------


def encode_all(tok: Tokenizer, texts: list[str]) -> int:
    """Tokenize texts in build-sized batches; returns the token count."""
    n = 0
    for a in range(0, len(texts), BATCH):
        flat, _ = tok.encode_batch(texts[a : a + BATCH])
        n += int(flat.size)
    return n


def _peer_child(conn: Connection, tok_path: str, docs_path: str, part: int, parts: int) -> None:
    """A tokenizing process: loads its share of the documents, then encodes them on each 'go'."""
    from curriculum.tokenize import load_tokenizer

    tok = load_tokenizer(tok_path, num_threads=1)
    texts = json.loads(Path(docs_path).read_text(encoding="utf-8"))[part::parts]
    encode_all(tok, texts[:BATCH])  # warm-up
    conn.send("ready")
    while conn.recv() == "go":
        encode_all(tok, texts)
        conn.send("done")


class PeerProcesses:
    """n spawned processes that tokenize 1/n of the documents each, started together."""

    def __init__(self, n: int, tok_path: str, docs_path: str) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_peer_child, args=(b, tok_path, docs_path, i, n), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)
        for c in self.conns:
            c.recv()

    def run(self) -> float:
        t = time.perf_counter()
        for c in self.conns:
            c.send("go")
        for c in self.conns:
            c.recv()
        return time.perf_counter() - t

    def close(self) -> None:
        for c in self.conns:
            c.send("stop")
        for p in self.procs:
            p.join(10)


# -- part 1: throughput ---------------------------------------------------------------------------


def timed_build(inputs: Path, out: Path, tok_path: str, workers: int, threads: int | None) -> tuple[float, BuildReport]:
    """Wall seconds and BuildReport of a fresh build (threads=1 also pins numba to one thread)."""
    import numba

    from curriculum.build import BuildConfig, build

    shutil.rmtree(out, ignore_errors=True)
    cfg = BuildConfig(inputs=[str(inputs)], out=str(out), tokenizer=tok_path, tokenizer_threads=threads)
    numba.set_num_threads(1 if threads == 1 else numba.config.NUMBA_NUM_THREADS)
    try:
        t = time.perf_counter()
        rep = build(cfg, workers=workers, progress=False)
        wall = time.perf_counter() - t
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        shutil.rmtree(out, ignore_errors=True)
    return wall, rep


def components(docs: list[tuple[str, str]], unlabeled: Path, tok: Tokenizer) -> dict[str, float]:
    """Seconds of each library step of the build over all documents, on one core."""
    import numba

    from curriculum.dedup import DedupConfig, signatures_for_texts
    from curriculum.ingest import InputFile, read_documents
    from curriculum.langid import LanguageIdentifier
    from curriculum.normalize import normalize_texts

    numba.set_num_threads(1)
    out: dict[str, float] = {}
    t = time.perf_counter()
    for f in sorted(unlabeled.glob("*.jsonl.zst")):
        for _ in read_documents(InputFile(str(f), "jsonl", "zstd")):
            pass
    out["read JSONL.zst"] = time.perf_counter() - t
    texts = [t for _, t in docs]
    t = time.perf_counter()
    for a in range(0, len(texts), 4096):
        normalize_texts(texts[a : a + 4096])
    out["normalize"] = time.perf_counter() - t
    # The build's default reads 200 characters, then 600 where unsure; one read of 600 and of 200 for reference.
    for name, prefix, quick in (("LID (200, then 600 if unsure)", 600, 200), ("LID (600 chars)", 600, 0), ("LID (200 chars)", 200, 0)):
        lid = LanguageIdentifier(prefix_chars=prefix, quick_chars=quick)
        lid.predict(texts[:100])
        lid.second_reads = 0
        t = time.perf_counter()
        for a in range(0, len(texts), 4096):
            lid.predict(texts[a : a + 4096])
        out[name] = time.perf_counter() - t
        if quick:
            print(f"two-stage LID read {lid.second_reads / len(texts):.1%} of the documents twice", flush=True)
    by_lang: dict[str, list[str]] = {}
    for lang, x in docs:
        by_lang.setdefault(lang, []).append(x)
    dcfg = DedupConfig()
    for lang, xs in by_lang.items():
        signatures_for_texts(xs[:10], lang, dcfg)  # compile / load the numba cache outside the timing
    t = time.perf_counter()
    for lang, xs in by_lang.items():
        for a in range(0, len(xs), 4096):
            signatures_for_texts(xs[a : a + 4096], lang, dcfg)
    out["MinHash signatures"] = time.perf_counter() - t
    t = time.perf_counter()
    encode_all(tok, [x for xs in by_lang.values() for x in xs])
    out["tokenize"] = time.perf_counter() - t
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return out


def throughput(args: argparse.Namespace, tok_path: str) -> list[dict]:
    """Build vs tokenize-only rows for LABELED and UNLABELED input; prints the table."""
    from curriculum.democorpus import UNLABELED
    from curriculum.tokenize import load_tokenizer

    rng = np.random.default_rng(0)
    pools = span_pools(UNLABELED)
    docs: list[tuple[str, str]] = []
    nbytes = 0
    while nbytes < args.mb * 1e6:
        more = make_docs(pools, rng, 1000)
        docs += more
        nbytes += sum(len(t.encode("utf-8")) for _, t in more)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        work = Path(tmp)
        labeled, unlabeled = write_corpus(work, docs)
        texts = [t for _, t in sorted(docs, key=lambda d: d[0])]  # the build tokenizes language by language
        (work / "docs.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        print(f"corpus: {len(docs):,} documents, {nbytes / 1e6:.1f} MB UTF-8 text, {len(pools)} languages; "
              f"Parquet {sum(f.stat().st_size for f in labeled.rglob('*.parquet')) / 1e6:.1f} MB, "
              f"JSONL.zst {sum(f.stat().st_size for f in unlabeled.glob('*')) / 1e6:.1f} MB; tokenizer {Path(tok_path).name}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        # Warm-up (numba caches, the LID model, this process's tokenizer, the page cache), then the
        # fixed cost of a build: a build of one small file.
        tiny = work / "tiny"
        shutil.copytree(labeled / UNLABELED[0], tiny / "labeled" / UNLABELED[0])
        shutil.copy(unlabeled / "web-000.jsonl.zst", tiny / "web-000.jsonl.zst")
        for w in (1, 2):
            timed_build(tiny, work / "out", tok_path, w, None)
        fixed = {w: timed_build(tiny / "labeled", work / "out", tok_path, w, None)[0] for w in (1, 2)}
        print(f"fixed cost of a build (one small file: discovery, manifest): {fixed[1]:.2f} s at 1 worker, "
              f"{fixed[2]:.2f} s at 2 workers", flush=True)
        comp = components(docs, unlabeled, load_tokenizer(tok_path, num_threads=1))
        print("one core, MB/s (time relative to tokenizing): " + ", ".join(
            f"{k} {nbytes / 1e6 / v:.1f} ({v / comp['tokenize']:.2f})" for k, v in comp.items()), flush=True)
        tok1, tok2 = load_tokenizer(tok_path, num_threads=1), load_tokenizer(tok_path, num_threads=2)
        procs = PeerProcesses(2, tok_path, str(work / "docs.json"))
        peers = {
            "1 thread": lambda: encode_all(tok1, texts),
            "2 threads": lambda: encode_all(tok2, texts),
            "2 processes": procs.run,
        }
        setups = ((1, 1, ("1 thread",)), (1, None, ("2 threads",)), (2, None, ("2 processes", "2 threads")))
        print(HEAD + "\n" + "-" * len(HEAD))
        try:
            for kind, inputs in (("LABELED", labeled), ("UNLABELED", unlabeled)):
                for workers, threads, peer_names in setups:
                    load = os.getloadavg()[0]
                    best_b, rep, best_p = float("inf"), None, {p: float("inf") for p in peer_names}
                    for _ in range(args.reps):
                        wall, r = timed_build(inputs, work / "out", tok_path, workers, threads)
                        if wall < best_b:
                            best_b, rep = wall, r
                        for p in peer_names:
                            t = time.perf_counter()
                            res = peers[p]()
                            best_p[p] = min(best_p[p], res if isinstance(res, float) else time.perf_counter() - t)
                    peer = min(best_p, key=best_p.get)
                    rows.append({
                        "kind": kind, "workers": workers, "threads": "1" if threads == 1 else ("2" if workers == 1 else "1 each"),
                        "build_s": best_b, "peer_s": best_p[peer], "peer": peer, "bytes": nbytes, "fixed_s": fixed[workers],
                        "seconds": rep.seconds, "docs_in": rep.docs_in, "docs_kept": rep.docs_kept, "drops": rep.drops, "load": load,
                    })
                    print_row(rows[-1])
        finally:
            procs.close()
    return rows


HEAD = (f"{'input':<10}{'workers':>8}{'threads':>8}{'build MB/s':>11}{'tok-only MB/s':>14}{'peer':>13}{'ratio':>7}"
        f"{'extract s':>10}{'dedup s':>8}{'tokenize s':>11}{'other s':>8}{'pool warm s':>12}{'kept':>8}{'load':>6}")


def print_row(r: dict) -> None:
    """One line of the throughput table; `pool warm s`: when the pool process could start work."""
    s = r["seconds"]
    other = r["build_s"] - sum(s[k] for k in ("extract", "dedup", "tokenize"))
    b, p = r["bytes"] / r["build_s"] / 1e6, r["bytes"] / r["peer_s"] / 1e6
    warm = f"{s['pool_warm']:.2f}" if "pool_warm" in s else "-"
    print(f"{r['kind']:<10}{r['workers']:>8}{r['threads']:>8}{b:>11.2f}{p:>14.2f}{r['peer']:>13}{b / p:>7.2f}"
          f"{s['extract']:>10.2f}{s['dedup']:>8.2f}{s['tokenize']:>11.2f}{other:>8.2f}{warm:>12}"
          f"{r['docs_kept'] / r['docs_in']:>8.1%}{r['load']:>6.2f}", flush=True)


# -- part 2: peak RSS on one big file -----------------------------------------------------------


def big_file(gb: float) -> tuple[Path, dict]:
    """The cached big JSONL.zst (written once, streaming) and its stats."""
    import zstandard

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"build-big-{gb:g}gb.jsonl.zst"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    pools = span_pools(BIG_LANGS)
    rng = np.random.default_rng(1)
    target = int(gb * 1e9)
    raw = docs = text_bytes = 0
    per_lang: dict[str, int] = {}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t = time.perf_counter()
    with open(tmp, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as w:
        while raw < target:
            batch = make_docs(pools, rng, 4096)
            for lang, _ in batch:
                per_lang[lang] = per_lang.get(lang, 0) + 1
            block = "".join(
                json.dumps({"text": text, "language": lang}, ensure_ascii=False) + "\n" for lang, text in batch
            ).encode("utf-8")
            w.write(block)
            raw += len(block)
            docs += 4096
    os.replace(tmp, path)
    meta = {"uncompressed_bytes": raw, "compressed_bytes": path.stat().st_size, "docs": docs,
            "docs_per_language": per_lang, "write_s": time.perf_counter() - t}
    meta_path.write_text(json.dumps(meta))
    return path, meta


def _memory_kb(pid: int) -> tuple[int, int, int]:
    """(Rss, Pss, Anonymous) of a process in kB from /proc/PID/smaps_rollup; zeros if it is gone.

    Pss splits pages shared between processes (libraries, a file two workers map), so it sums
    correctly over a process tree; Anonymous is memory the process itself allocated.
    """
    vals = {"Rss:": 0, "Pss:": 0, "Anonymous:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                k = line.split(None, 1)[0]
                if k in vals:
                    vals[k] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return vals["Rss:"], vals["Pss:"], vals["Anonymous:"]


def process_baseline_kb(tok_path: str) -> tuple[int, int]:
    """(Rss, Anonymous) of a fresh process that imported the build and loaded the tokenizer and kernels."""
    code = (
        "import sys, json, curriculum.build, curriculum.ingest, curriculum.shards\n"
        "from curriculum.tokenize import load_tokenizer\n"
        "from curriculum.dedup import DedupConfig, signatures_for_texts\n"
        "load_tokenizer(sys.argv[1], num_threads=1).encode_batch(['a b c d e f'] * 10)\n"
        "signatures_for_texts(['a b c d e f'] * 10, 'fra_Latn', DedupConfig())\n"
        "v = {l.split()[0]: int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.split()[1:2] and l.split()[1].isdigit()}\n"
        "print(json.dumps([v['Rss:'], v['Anonymous:']]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, tok_path], capture_output=True, text=True, cwd=ROOT, check=True)
    rss, anon = json.loads(proc.stdout.strip().splitlines()[-1])
    return rss, anon


def _stage(out: Path, langs: list[str]) -> tuple[str, list[str]]:
    """Which stage the build is in, from the task records it has written so far."""
    work = out / ".work"
    if (out / "manifest.json").exists():
        return "merge", langs
    stats = work / "extract" / "000000" / "stats.json"
    if not stats.exists():
        return "extract", langs
    if not langs:
        langs = sorted(json.loads(stats.read_text())["kept"])
    if sum((work / "dedup" / f"{l}.json").exists() for l in langs) < len(langs):
        return "dedup", langs
    return "tokenize", langs


def big_rss(args: argparse.Namespace, tok_path: str) -> dict:
    """Build the big file in a subprocess, sampling the process tree's RSS every 0.1 s."""
    import psutil

    path, meta = big_file(args.big_gb)
    out = CACHE / "build-big-out"
    shutil.rmtree(out, ignore_errors=True)
    print(f"\nbig input: {path.name}: {meta['uncompressed_bytes'] / 1e9:.2f} GB of JSON lines "
          f"({meta['compressed_bytes'] / 1e9:.2f} GB zstd), {meta['docs']:,} documents, "
          f"{len(meta['docs_per_language'])} languages labeled by a `language` field; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    cmd = [sys.executable, "-m", "curriculum.cli", "build", str(path), "--out", str(out), "--tokenizer", tok_path,
           "--workers", str(args.big_workers), "--shard-mb", f"{args.big_shard_mb:g}"]
    log = open(CACHE / "build-big.log", "w")
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    peak = {"rss": 0, "pss": 0, "anon": 0}
    per_stage: dict[str, dict] = {}
    per_proc: dict[int, list] = {}  # pid → [role, peak rss, peak anon]
    langs: list[str] = []
    stage = "extract"
    samples = 0
    try:
        while proc.poll() is None:
            try:
                tree = [proc.pid] + [c.pid for c in proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            tot = {"rss": 0, "pss": 0, "anon": 0}
            for pid in tree:
                r, p, a = _memory_kb(pid)
                tot["rss"], tot["pss"], tot["anon"] = tot["rss"] + r, tot["pss"] + p, tot["anon"] + a
                rec = per_proc.setdefault(pid, ["cli" if pid == proc.pid else "worker", 0, 0])
                rec[1], rec[2] = max(rec[1], r), max(rec[2], a)
            samples += 1
            if samples % 5 == 0:
                stage, langs = _stage(out, langs)
            st = per_stage.setdefault(stage, {"rss": 0, "pss": 0, "anon": 0, "start": time.perf_counter() - t0})
            for k, v in tot.items():
                st[k] = max(st[k], v)
                peak[k] = max(peak[k], v)
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print((CACHE / "build-big.log").read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"the big build failed with exit code {proc.returncode}; log: {CACHE / 'build-big.log'}")
    man = json.loads((out / "manifest.json").read_text())
    from curriculum.manifest import read_manifest

    m = read_manifest(out)
    shard_bytes = int(m.shards["bytes"].sum())
    workers = [v for v in per_proc.values() if v[0] == "worker" and v[1] > 50_000]  # not the resource tracker
    cli = next(v for v in per_proc.values() if v[0] == "cli")
    base_rss, base_anon = process_baseline_kb(tok_path)
    res = {"meta": meta, "wall_s": wall, "peak_kb": peak, "stages": per_stage, "docs": man.get("documents"),
           "tokens": int(m.languages["tokens"].sum()), "shards": m.shards.height, "shard_bytes": shard_bytes,
           "worker_peak_kb": max((v[1] for v in workers), default=0), "worker_peak_anon_kb": max((v[2] for v in workers), default=0),
           "cli_peak_kb": cli[1], "cli_peak_anon_kb": cli[2], "baseline_kb": [base_rss, base_anon], "samples": samples}
    gb = meta["uncompressed_bytes"] / 1e9
    print(f"built in {wall:.0f} s ({meta['uncompressed_bytes'] / 1e6 / wall:.1f} MB/s of JSON lines) with "
          f"--workers {args.big_workers} --shard-mb {args.big_shard_mb:g}: {res['docs']['kept']:,} of {res['docs']['input']:,} documents kept, "
          f"{res['tokens']:,} tokens in {res['shards']} shards ({shard_bytes / 1e9:.2f} GB)")
    print(f"peak memory of the process tree for {gb:.2f} GB of input: PSS {peak['pss'] / 1e6:.2f} GB "
          f"({peak['pss'] / 1e6 / gb:.2f}x the input), RSS summed {peak['rss'] / 1e6:.2f} GB, anonymous {peak['anon'] / 1e6:.2f} GB; "
          f"one worker at most RSS {res['worker_peak_kb'] / 1e6:.2f} GB (anonymous {res['worker_peak_anon_kb'] / 1e6:.2f}), "
          f"the CLI process {cli[1] / 1e6:.2f} GB ({cli[2] / 1e6:.2f}); a fresh process with the build's imports, "
          f"tokenizer and kernels loaded: RSS {base_rss / 1e6:.2f} GB (anonymous {base_anon / 1e6:.2f})")
    print(f"{'stage':<10}{'from s':>8}{'PSS GB':>8}{'RSS GB':>8}{'anon GB':>9}")
    for name, st in per_stage.items():
        print(f"{name:<10}{st['start']:>8.0f}{st['pss'] / 1e6:>8.2f}{st['rss'] / 1e6:>8.2f}{st['anon'] / 1e6:>9.2f}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> int:
    global CACHE  # --cache replaces the default for every helper
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=40.0, help="MB of UTF-8 text for the throughput runs")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each build and peer; the best counts")
    ap.add_argument("--big-gb", type=float, default=2.0, help="GB of uncompressed JSON lines in the big .jsonl.zst")
    ap.add_argument("--big-workers", type=int, default=2, help="--workers of the big build")
    ap.add_argument("--big-shard-mb", type=float, default=256, help="--shard-mb of the big build (256: the build's default)")
    ap.add_argument("--quick", action="store_true", help="small run: --mb 8 --reps 1 --big-gb 0.25")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the big build's output under --cache")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the big file, its build and log go")
    args = ap.parse_args()
    CACHE = args.cache
    if args.quick:
        args.mb, args.reps, args.big_gb = 8.0, 1, 0.25
    from curriculum import assets

    gemma = str(assets.gemma2_tokenizer_path())
    results: dict = {"cpus": os.cpu_count(), "load_start": os.getloadavg()}
    if not args.skip_throughput:
        results["throughput"] = throughput(args, gemma)
    if not args.skip_big:
        results["big"] = big_rss(args, gemma)
    results["load_end"] = os.getloadavg()
    print(f"load average at the end: {results['load_end'][0]:.2f} (1 min), {results['load_end'][1]:.2f} (5 min)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
