"""Live curriculum at full scale: how long from `POST /v1/amendments` to the first batch served
under the amendment, and what that first (cold-segment) batch costs against a steady-state one.

    NUMBA_THREADING_LAYER=omp python benchmarks/bench_amend.py [--requests 40] [--follow 10] [--ahead 4]
        [--repeats 3] [--policy-amendments 100] [--no-profile]

Inputs: mmBERT's recipe (`manifests/recipes/mmbert.toml`, copied into a fresh temp dir per
scenario: the journal is written beside the recipe) on the 1,833-language virtual corpus of
`curriculum synth --languages 1833 --total-tokens 3e12`, with the persisted blend index of
`bench_scale.py` (`.cache/bench/index-mmbert`; built here once, ~2 min on 2 cores, if missing).

Per scenario, two `sampler-server serve` processes (uvicorn, 127.0.0.1) share the journal:
replica A takes the POSTs; replica B polls the journal only once an hour, so its first request
past `from_step` must publish the step and apply the journal on demand. Trainers are 8 ranks:
each request is one rank's slice of the 4,608-sequence global batch (576 sequences). Measured:
- steady state: one rank's batch at N consecutive steps, mid-pretrain and mid-train (p50 / p99);
- per amendment kind (`--repeats` rounds; the table shows medians), with `from_step` = A's last
  served step + `--ahead`:
  (a) the POST (validation by planning, journal append + fsync, apply, the reply's listing),
  (b) from sending the POST to the first 200 for `from_step` (requested as soon as it returns,
      503s retried at once), (c) that batch alone (new blend piece, no checkpoints: cold) and its
  ratio to the steady p50, (d) the `--follow` batches after it, and B's first request for
  `from_step` (publish + journal apply + cold batch), whose bytes must equal A's;
- server RSS before and after; then, in this process, a cProfile of the same server code paths
  (`Live.admit`, `Live.describe`, `Service.encode` of the first batch after `from_step`) and the
  cost of the first mid-train batch after a pretrain amendment (the stream bases walk the new
  pretrain blend to its end: no index holds it yet (servers save it once walked; each section
  here links only the unamended run's index files), and a replica that has not served the rest of
  pretrain since the amendment, e.g. one restarted, has no checkpoints of it);
- journal growth: admission, listing and the first batch after each amendment as the journal
  grows the way `--policy loss-balance` grows it.
Everything stays on 127.0.0.1; the whole run takes about 100 s on 2 cores once the index exists.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trainer_client import wire  # noqa: E402

RECIPE = ROOT / "manifests" / "recipes" / "mmbert.toml"
TOKEN = "bench-amend-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORLD = 8  # trainer ranks: 576 of the 4,608 sequences each
PRETRAIN_STEP = 300_000  # mid-pretrain, far past the batch warm-up (66,002 steps)
MIDTRAIN_STEP = 547_000  # mid-train (540,720 .. 556,614)


# -- inputs -----------------------------------------------------------------------------------

def ensure_inputs(cache: Path) -> tuple[Path, Path]:
    """The synthetic 1,833-language manifest and its blend index (built once, then reused)."""
    from curriculum.synth import synth_long_tail
    from sampler_server.sampler import Sampler

    manifest = cache / "synth-1833-3e12"
    if not (manifest / "manifest.json").exists():
        synth_long_tail(manifest, 1833, 3e12)
    index = cache / "index-mmbert"
    s = Sampler(manifest, RECIPE, seed=0, index_dir=index)
    missing = [p for p in (s._index_path(sg.blend) for segs in s._segments for sg in segs) if not p.exists()]
    if missing:
        print(f"building the blend index in {index} ({len(missing)} file(s); ~2 min on 2 cores, once) ...", flush=True)
    info = s.build_index()
    if missing:
        print(f"  built in {info['seconds']:.0f} s, {info['bytes'] / 2**20:.0f} MB", flush=True)
    return manifest, index


def base_index(index: Path, manifest: Path, dst: Path) -> Path:
    """A directory with links to the index files of the *unamended* run only. Servers persist the
    blends they walk (content-addressed, in the same directory), so a shared directory would hold
    amended blends of earlier runs of this benchmark and hide the cost measured here."""
    from sampler_server.sampler import Sampler

    dst.mkdir(parents=True, exist_ok=True)
    s = Sampler(manifest, RECIPE, seed=0, index_dir=index)
    for path in {s._index_path(sg.blend) for segs in s._segments for sg in segs}:
        (dst / path.name).symlink_to(path)
    return dst


def fresh_recipe(tmp: Path) -> Path:
    """mmbert.toml copied into `tmp` (its journal goes beside it, never into the repo)."""
    tmp.mkdir(parents=True, exist_ok=True)
    dst = tmp / RECIPE.name
    shutil.copyfile(RECIPE, dst)
    return dst


# -- servers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    url: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=600)

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def get_batch(self, step: int, rank: int) -> tuple[float, bytes, int]:
        """(seconds of the 200, its body, 503s answered before it)."""
        retries = 0
        while True:
            t = time.perf_counter()
            r = self.client.get(f"/v1/batches/{step}", params={"rank": rank, "world_size": WORLD})
            dt = time.perf_counter() - t
            if r.status_code == 200:
                return dt, r.content, retries
            if r.status_code != 503:
                log = getattr(self.proc, "log_path", None)
                tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
                raise SystemExit(f"{self.name}: GET /v1/batches/{step}: {r.status_code} {r.text[:300]}\n{tail}")
            retries += 1
            time.sleep(0.002)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def launch(name: str, manifest: Path, recipe: Path, index: Path, journal_poll: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")),
           "SAMPLER_INDEX_DIR": str(index), "SAMPLER_JOURNAL_POLL": str(journal_poll),
           "SAMPLER_AMEND_TOKEN": TOKEN, "SAMPLER_LOG_LEVEL": "warning"}
    log = recipe.parent / f"server-{name}.log"
    with open(log, "w") as sink:  # a file, not a pipe: a server never blocks on a full pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "sampler_server.cli", "serve", "--manifest", str(manifest), "--recipe", str(recipe),
             "--port", str(port), "--no-access-log"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sink, text=True)
    proc.log_path = log
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(name: str, proc: subprocess.Popen, url: str) -> Server:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server {name} exited: {proc.log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return Server(name, proc, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server {name} did not start in 180 s")


@contextmanager
def replicas(manifest: Path, recipe: Path, index: Path):
    """Replica A (takes the POSTs, default 1 s journal poll) and B (polls hourly), started together."""
    started = [("A", *launch("A", manifest, recipe, index, 1.0)), ("B", *launch("B", manifest, recipe, index, 3600))]
    servers: list[Server] = []
    try:
        t = time.perf_counter()
        for name, proc, url in started:
            servers.append(wait_ready(name, proc, url))
        print(f"  replicas A and B ready in {time.perf_counter() - t:.1f} s", flush=True)
        yield servers[0], servers[1]
    finally:
        for s in servers:
            s.close()
        for _, proc, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- measurements -----------------------------------------------------------------------------

def ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def steady(a: Server, start: int, n: int, warm: int = 5) -> np.ndarray:
    """Latencies (s) of one rank's batch at n consecutive steps from `start` (`warm` untimed first:
    the server's first big responses grow its heap)."""
    for s in range(start - warm, start):
        a.get_batch(s, s % WORLD)
    return np.array([a.get_batch(s, s % WORLD)[0] for s in range(start, start + n)])


@dataclass
class Row:
    kind: str
    phase: str
    version: int
    from_step: int
    post: float
    to_first: float
    first: float
    retries: int
    follow: np.ndarray
    replica: float
    steady_p50: float


def amend_once(a: Server, b: Server, kind: str, phase: str, changes: dict, cur: int, ahead: int, follow: int,
               steady_p50: float) -> tuple[Row, int]:
    """POST one amendment at cur + ahead on A, then time the batches of A and B past it."""
    from_step = cur + ahead
    body = {"from_step": from_step, "changes": changes, "reason": f"bench_amend: {kind}"}
    t0 = time.perf_counter()
    r = a.client.post("/v1/amendments", json=body, headers=AUTH)
    t_post = time.perf_counter() - t0
    if r.status_code != 201:
        raise SystemExit(f"POST /v1/amendments ({kind}): {r.status_code} {r.text[:400]}")
    version = r.json()["version"]
    first, data, retries = a.get_batch(from_step, 0)
    to_first = time.perf_counter() - t0
    md = wire.decode(data).metadata
    if int(md["journal_version"]) != version or md["build_id"] == md["run_id"]:
        raise SystemExit(f"{kind}: the batch of step {from_step} does not carry the amendment: {md}")
    lat = np.array([a.get_batch(s, s % WORLD)[0] for s in range(from_step + 1, from_step + 1 + follow)])
    # Replica B: first request past from_step, with a journal it has not read yet.
    t_b, data_b, _ = b.get_batch(from_step, 1)
    wb, wa = wire.decode(data_b), wire.decode(a.get_batch(from_step, 1)[1])
    if not all(np.array_equal(getattr(wa, k), getattr(wb, k)) for k in ("input_ids", "labels", "cu_seqlens", "lang")) \
            or wb.metadata["build_id"] != wa.metadata["build_id"]:
        raise SystemExit(f"{kind}: replica B served step {from_step} with other bytes than A")
    row = Row(kind, phase, version, from_step, t_post, to_first, first, retries, lat, t_b, steady_p50)
    return row, from_step + follow


def top_languages(a: Server, phase: str, n: int) -> list[str]:
    r = a.client.get("/v1/mixture", params={"phase": phase}).json()
    langs = sorted(r["languages"], key=lambda x: -x["weight"])
    return [x["language"] for x in langs[:n]]


def multipliers(langs: list[str], seed: int = 0) -> dict[str, float]:
    """What `--policy loss-balance` writes: a multiplier within ±20 % for each language."""
    rng = np.random.default_rng(seed)
    return {k: float(f"{v:.6g}") for k, v in zip(langs, rng.uniform(0.8, 1.2, len(langs)))}


def scenario(name: str, manifest: Path, index: Path, tmp: Path, step: int, n: int, follow: int, ahead: int,
             kinds: list[tuple[str, object]], repeats: int, rss: dict) -> tuple[dict[str, list[Row]], tuple]:
    """Steady state, then `repeats` rounds of every amendment kind (kinds: label and
    changes(replica, round)), on a fresh journal with replicas A and B."""
    print(f"\n[{name}] fresh journal in {tmp}", flush=True)
    recipe = fresh_recipe(tmp)
    with replicas(manifest, recipe, index) as (a, b):
        lat = steady(a, step, n)
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        b.get_batch(step - 6, 1)  # B is serving too (its watermark is below every from_step)
        rss[f"{name} A before"], rss[f"{name} B before"] = a.rss_mb(), b.rss_mb()
        cur = step + n - 1
        rows: dict[str, list[Row]] = {}
        for r in range(repeats):
            for kind, changes in kinds:
                row, cur = amend_once(a, b, kind, name, changes(a, r), cur, ahead, follow, p50)
                rows.setdefault(kind, []).append(row)
                print(f"  v{row.version} {kind}: POST {ms(row.post)} ms, first batch {ms(row.first)} ms, "
                      f"replica B {ms(row.replica)} ms", flush=True)
        rss[f"{name} A after"], rss[f"{name} B after"] = a.rss_mb(), b.rss_mb()
        info = a.client.get("/v1/schedule", params={"step": step}).json()
    return rows, (name, info, lat, p50, p99)


# -- in-process profile -----------------------------------------------------------------------

def profile_report(pr: cProfile.Profile, total: float, title: str, limit: int = 10) -> None:
    """Top entries by cumulative time, project code and the libraries it calls."""
    st = pstats.Stats(pr)
    rows = []
    for (fn, line, name), (_, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        where = fn.replace(str(ROOT) + "/", "")
        if "site-packages" in where:
            where = where.split("site-packages/")[1]
        rows.append((ct, tt, nc, f"{where}:{line}({name})"))
    rows.sort(reverse=True)
    print(f"\n{title}: {total * 1e3:.1f} ms")
    print("| cumulative ms | own ms | calls | function |\n|---|---|---|---|")
    shown = 0
    for ct, tt, nc, name in rows:
        if "cProfile" in name or "<built-in method builtins.exec>" in name or name.startswith("~"):
            continue
        print(f"| {ct * 1e3:.1f} | {tt * 1e3:.1f} | {nc} | `{name}` |")
        shown += 1
        if shown >= limit:
            break


def cumulative(pr: cProfile.Profile, name: str) -> float:
    """Seconds spent in (and under) the function `name` in a profile."""
    return sum(v[3] for (_, _, n), v in pstats.Stats(pr).stats.items() if n == name)  # type: ignore[attr-defined]


def profiled(fn, *args):
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    out = fn(*args)
    pr.disable()
    return out, time.perf_counter() - t, pr


def in_process(manifest: Path, index: Path, tmp: Path) -> None:
    """The server's code paths without HTTP, under cProfile (same objects the routes call)."""
    from curriculum.amend import parse_amendment
    from sampler_server.app import create_app
    from sampler_server.settings import ServerSettings

    print("\n## Where the time goes (in-process, cProfile, the routes' own calls without HTTP)")
    recipe = fresh_recipe(tmp)
    settings = ServerSettings(manifest=str(manifest), recipe=recipe, index_dir=index, amend_token=TOKEN,
                              log_level="warning")
    t = time.perf_counter()
    app = create_app(settings)
    print(f"\ncreate_app (Sampler, plans of every variant, warm-up batch): {(time.perf_counter() - t) * 1e3:.0f} ms")
    svc = app.state.service
    s = svc.sampler
    for st in range(PRETRAIN_STEP - 3, PRETRAIN_STEP + 1):
        svc.encode(None, st, st % WORLD, WORLD, "sparse", None)
    langs = s.plans[0].table.sort("weight", descending=True)["language"].to_list()
    cur = PRETRAIN_STEP
    kinds = [("tau", {"current": {"tau": 0.5}}), ("multipliers x60", {"current": {"language_weights": multipliers(langs)}})]
    for kind, ch in kinds:
        a = parse_amendment({"from_step": cur + 4, "changes": ch, "reason": "profile"})
        stored, dt, pr = profiled(svc.live.admit, a)
        profile_report(pr, dt, f"`Live.admit` ({kind}: check by planning, journal append + fsync, apply)")
        _, dt, pr = profiled(svc.live.describe)
        profile_report(pr, dt, f"`Live.describe` after it ({len(s.amendments)} entries)", 6)
        _, dt, pr = profiled(svc.encode, None, stored.from_step, 0, WORLD, "sparse", None)
        profile_report(pr, dt, f"`Service.encode` of the first batch at from_step {stored.from_step} (cold piece)")
        _, dt2, _ = profiled(svc.encode, None, stored.from_step + 1, 1, WORLD, "sparse", None)
        print(f"\nthe next batch: {dt2 * 1e3:.1f} ms")
        cur = stored.from_step + 1
    _, dt, pr = profiled(svc.default._derive)
    profile_report(pr, dt, "`Build._derive` (the dashboard's plan views; re-run by the first request after a change)", 8)

    # A pretrain amendment makes a new blend piece that runs to the end of pretrain, and no index
    # holds it yet (this section's index dir links the unamended run's files only): the first
    # mid-train batch needs every language's count at the end of pretrain,
    # i.e. a walk of that piece. Measured on a short piece near the end of pretrain; the time is
    # linear in the piece's length.
    p1 = s.timeline.phase_start[1]
    near = p1 - 2_000
    for st in (near - 2, near - 1):
        svc.encode(None, st, 0, WORLD, "sparse", None)
    svc.live.admit(parse_amendment({"from_step": near, "changes": {"current": {"tau": 0.6}}, "reason": "profile"}))
    lay = s.timeline.layouts[0]
    walk = lay.total_sequences - lay.first_sequence(near)
    _, dt, pr = profiled(svc.encode, None, p1, 0, WORLD, "sparse", None)
    rate = walk / cumulative(pr, "_base")
    profile_report(pr, dt, f"`Service.encode` of the first mid-train step ({p1}) after a pretrain amendment at "
                   f"step {near} ({walk:,} pretrain sequences to walk)", 8)
    mid = lay.total_sequences - lay.first_sequence(PRETRAIN_STEP)
    print(f"\nwalk rate: {rate / 1e6:.1f}M sequences/s; for an amendment at step {PRETRAIN_STEP:,} "
          f"({mid:,} sequences to the end of pretrain) that first mid-train batch would take ~{mid / rate:.0f} s, "
          f"at step {lay.warm_steps:,} (end of the batch warm-up) "
          f"~{(lay.total_sequences - lay.first_sequence(lay.warm_steps)) / rate:.0f} s")
    _, dt, _ = profiled(svc.encode, None, p1 + 1, 1, WORLD, "sparse", None)
    print(f"the mid-train batch after it: {dt * 1e3:.1f} ms")


def journal_growth(manifest: Path, index: Path, tmp: Path, n: int, every: int) -> None:
    """Cost of admitting, listing and serving as the journal grows the way `--policy loss-balance`
    grows it (multipliers for every pretrain language every `every` steps), through the objects
    the routes call."""
    from curriculum.amend import parse_amendment
    from sampler_server.app import create_app
    from sampler_server.settings import ServerSettings

    print(f"\n## Journal growth: {n} policy-like amendments (60 multipliers each, every {every} steps), "
          "in-process\n")
    recipe = fresh_recipe(tmp)
    app = create_app(ServerSettings(manifest=str(manifest), recipe=recipe, index_dir=index, amend_token=TOKEN,
                                    log_level="warning"))
    svc = app.state.service
    s = svc.sampler
    proc = psutil.Process()
    rng = np.random.default_rng(1)
    mult = dict.fromkeys(s.plans[0].table["language"].to_list(), 1.0)
    svc.encode(None, PRETRAIN_STEP, 0, WORLD, "sparse", None)
    rss0 = proc.memory_info().rss
    marks = sorted({1, n // 8, n // 4, n // 2, n} - {0})
    print("| journal version | admit (ms) | of which `check_amendments` (ms) | describe (ms) | "
          "first batch after (ms) | next batch (ms) |\n|---|---|---|---|---|---|")
    step, prof, admit_n = PRETRAIN_STEP, None, 0.0
    t_loop = time.perf_counter()
    for v in range(1, n + 1):
        # Like a policy run: an amendment `every` steps ahead, then trainers reach it.
        step += every
        mult = {k: float(f"{min(max(m * rng.uniform(0.8, 1.2), 0.5), 2.0):.6g}") for k, m in mult.items()}
        a = parse_amendment({"from_step": step, "changes": {"pretrain": {"language_weights": mult}},
                             "source": "policy:loss-balance"})
        if v not in marks:
            svc.live.admit(a)
            svc.encode(None, step, 0, WORLD, "sparse", None)
            continue
        t = time.perf_counter()
        s.check_amendments([*s.amendments, a])  # what admission checks, timed alone
        check = time.perf_counter() - t
        stored, admit, pr = profiled(svc.live.admit, a)
        _, desc, _ = profiled(svc.live.describe)
        _, first, pr_first = profiled(svc.encode, None, stored.from_step, 0, WORLD, "sparse", None)
        if v == n:
            prof, admit_n, prof_first, first_n = pr, admit, pr_first, first
        _, nxt, _ = profiled(svc.encode, None, stored.from_step + 1, 1, WORLD, "sparse", None)
        print(f"| {v} | {ms(admit)} | {ms(check)} | {ms(desc)} | {ms(first)} | {ms(nxt)} |", flush=True)
    print(f"\n{n} admissions (each followed by its first batch) in {time.perf_counter() - t_loop:.1f} s; "
          f"amendment state held: {len(s._plan_cache)} cached plans, {len(s._blends)} blends; process RSS "
          f"{(proc.memory_info().rss - rss0) / 2**20:+.0f} MB (mostly the streams' block caches of the newly served "
          f"positions, one region every {every} steps)")
    if prof is not None:
        profile_report(prof, admit_n, f"`Live.admit` at journal version {n} (under cProfile)", 14)
        profile_report(prof_first, first_n, f"`Service.encode` of the first batch after it (under cProfile)", 14)


# -- main -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=40, help="steady-state batches timed per phase")
    ap.add_argument("--follow", type=int, default=10, help="batches timed after each amendment's first")
    ap.add_argument("--ahead", type=int, default=4, help="from_step = last served step + ahead")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every amendment kind (the table shows medians)")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    ap.add_argument("--no-profile", action="store_true", help="skip the in-process cProfile sections")
    ap.add_argument("--policy-amendments", type=int, default=100, help="journal length of the growth section")
    ap.add_argument("--policy-every", type=int, default=20, help="steps between the growth section's amendments")
    args = ap.parse_args()
    t_all = time.perf_counter()
    manifest, index = ensure_inputs(Path(args.cache))
    rss: dict[str, float] = {}
    shared = index
    with tempfile.TemporaryDirectory(prefix="bench-amend-") as tmpdir:
        tmp = Path(tmpdir)
        index = base_index(shared, manifest, tmp / "index")
        alt = lambda *v: (lambda r: v[r % len(v)])  # noqa: E731 - round r's value
        tau0, top0, dec0, tau1 = alt(0.5, 0.6), alt(120, 100), alt(1.5e11, 1.2e11), alt(0.4, 0.45)
        pretrain_kinds = [
            ("τ 0.7 → 0.5 / 0.6 (current phase)", lambda a, r: {"current": {"tau": tau0(r)}}),
            ("languages top:60 → top:120 / 100", lambda a, r: {"current": {"languages": {"top": top0(r)}}}),
            ("multipliers for 100 languages",
             lambda a, r: {"current": {"language_weights": multipliers(top_languages(a, "pretrain", 100), r)}}),
            ("decay budget 100B → 150B / 120B only", lambda a, r: {"decay": {"tokens": dec0(r)}}),
        ]
        midtrain_kinds = [
            ("τ 0.5 → 0.4 / 0.45 (current phase)", lambda a, r: {"current": {"tau": tau1(r)}}),
            ("multipliers for 100 languages",
             lambda a, r: {"current": {"language_weights": multipliers(top_languages(a, "midtrain", 100), r)}}),
        ]
        rows1, st1 = scenario("pretrain", manifest, index, tmp / "pretrain", PRETRAIN_STEP, args.requests,
                              args.follow, args.ahead, pretrain_kinds, args.repeats, rss)
        rows2, st2 = scenario("midtrain", manifest, index, tmp / "midtrain", MIDTRAIN_STEP, args.requests,
                              args.follow, args.ahead, midtrain_kinds, args.repeats, rss)

        print("\n## Steady state (one rank of 8, consecutive steps, over HTTP)\n")
        print("| phase | per-rank batch | requests | p50 (ms) | p99 (ms) |\n|---|---|---|---|---|")
        for name, info, lat, p50, p99 in (st1, st2):
            per = info["global_batch"] // WORLD
            print(f"| {name} (step {info['step']:,}) | {per} x {info['seq_len']:,} | {lat.size} | {ms(p50)} | {ms(p99)} |")

        print(f"\n## Amendments (1,833-language manifest, mmBERT recipe; from_step = last served + {args.ahead}; "
              f"median of {args.repeats} rounds, max in brackets; v = journal version after each POST)\n")
        print("| amendment | phase | v | POST (ms) | POST → first batch (ms) | first batch, cold (ms) | ÷ steady p50 "
              f"| next {args.follow}: p50 / max (ms) | ÷ next p50 | replica B, first past from_step (ms) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for (phase, rows) in (("pretrain", rows1), ("midtrain", rows2)):
            steady_p50 = st1[3] if phase == "pretrain" else st2[3]
            for kind, rs in rows.items():
                def med(f: str) -> str:
                    x = np.array([getattr(r, f) for r in rs])
                    return f"{ms(np.median(x))} ({ms(x.max())})" if len(rs) > 1 else ms(x[0])
                retries = sum(r.retries for r in rs)
                retry = f", {retries} × 503" if retries else ""
                follow_all = np.concatenate([r.follow for r in rs])
                first = np.median([r.first for r in rs])
                print(f"| {kind} | {phase} | {', '.join(str(r.version) for r in rs)} | {med('post')} "
                      f"| {med('to_first')}{retry} | {med('first')} | {first / steady_p50:.2f} "
                      f"| {ms(np.median(follow_all))} / {ms(follow_all.max())} | {first / np.median(follow_all):.2f} "
                      f"| {med('replica')} |")

        print("\n## Server RSS (MB)\n")
        print("| replica | before the amendments | after |\n|---|---|---|")
        for name in ("pretrain", "midtrain"):
            for rep in ("A", "B"):
                print(f"| {name} {rep} | {rss[f'{name} {rep} before']:.0f} | {rss[f'{name} {rep} after']:.0f} |")

        if not args.no_profile:
            in_process(manifest, base_index(shared, manifest, tmp / "index-profile"), tmp / "profile")
            journal_growth(manifest, base_index(shared, manifest, tmp / "index-growth"), tmp / "growth",
                           args.policy_amendments, args.policy_every)
    print(f"\ntotal run: {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
