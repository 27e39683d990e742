"""The sampler's HTTP service: batches as Arrow IPC, the control plane, metrics and the dashboard.

Routes parse, call the `Sampler` (in a worker thread: the numba kernels release the GIL, so
concurrent requests use every core) and format; the wire format lives in `trainer_client.wire`.
Every invalid request is a 4xx with a JSON body {"error", "message"} that says what to fix; a
shard that goes missing or corrupt while serving is a 503 naming it, and `/readyz` turns false
until the file is back. No request parameter is ever used to build a filesystem path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import anyio
import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from curriculum import storage
from curriculum.amend import Amendment, AmendmentConflict, AmendmentError
from curriculum.errors import CurriculumError
from curriculum.plan import EPOCH_WARNING, PhasePlan, phase_summary, plan_all_variants
from curriculum.recipe import Recipe, load_recipe
from curriculum.schedule import ScheduleError, StepInfo
from curriculum.shards import ShardError, open_shard
from sampler_server.kernels.wire_parts import wire_parts
from sampler_server.lane import BatchLane
from sampler_server.live import Behind, JournalBroken, Live, open_journal
from sampler_server.metrics import TOP_GROUP, Metrics, MetricsMiddleware, PROMETHEUS_CONTENT_TYPE
from sampler_server.progress import ProgressReport, ProgressStore, consumed_per_phase, progress_json, progress_summary
from sampler_server.sampler import Sampler
from sampler_server.settings import ServerSettings
from trainer_client import wire

log = logging.getLogger("sampler_server")

STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "index.html": "text/html"}
MIXTURE_BARS = 10  # the dashboard's mixture chart: top languages, then the rest as one bar
SERIES_POINTS = 400  # progress points sent to the dashboard (older history is thinned)
STREAM_PUBLISH_WINDOW = 16  # /v1/stream raises the amendment watermark this many of its steps at a time


# Query parameters shared by the batch routes (module level: FastAPI resolves them by name).
Rank = Annotated[int, Query(description="rank of the trainer process, 0 <= rank < world_size")]
World = Annotated[int, Query(description="number of trainer ranks; must divide the global batch")]
Labels = Annotated[Literal["sparse", "dense"], Query(description="label encoding")]
Comp = Annotated[Literal["none", "zstd"], Query(description="Arrow buffer compression")]
Count = Annotated[int | None, Query(description="batches; default: to the last step")]
StepQuery = Annotated[int | None, Query(description="global step; omit for the phase table")]
PhaseQuery = Annotated[str | None, Query(description="phase name or index; omit for all")]
Variant = Annotated[str | None, Query(description="phase variant to serve; omit for the server's default")]
Limit = Annotated[int, Query(ge=1, le=100_000, description="progress points to return")]


class StartupError(CurriculumError):
    """The server cannot start on these inputs; the message lists what to fix."""


class ApiError(Exception):
    """A request the server refuses: becomes `{"error": code, "message": ...}` with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: object):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


# -- start-up ---------------------------------------------------------------------------------

def make_sampler(settings: ServerSettings, manifest: object, recipe: Recipe, variant: str | None,
                 amendments: list[Amendment] | tuple[Amendment, ...] = ()) -> Sampler:
    """A Sampler of `variant` with the server's settings (manifest: a path or a read Manifest)."""
    return Sampler(manifest, recipe, settings.seed, variant=variant, chunk=settings.chunk,
                   block_tokens=settings.block_tokens, threads=settings.kernel_threads, index_dir=settings.index_dir,
                   cache_dir=settings.cache_dir, cache_bytes=settings.cache_bytes, amendments=amendments)


def open_sampler(settings: ServerSettings) -> Sampler:
    """Build the Sampler of the default variant, amended by the journal, and check the manifest
    (every shard present with its recorded size; every checksum with `verify`); raise
    StartupError listing the problems."""
    try:
        journal = open_journal(settings.journal, settings.recipe, required=settings.journal is not None,
                               manifest=settings.manifest)
        entries = journal.entries if journal is not None else []
        sampler = make_sampler(settings, settings.manifest, load_recipe(settings.recipe), settings.variant, entries)
    except AmendmentError as exc:
        raise StartupError(f"{exc}; fix the journal or move it aside to serve the recipe unamended") from None
    except (ValueError, OSError, CurriculumError) as exc:  # e.g. a manifest without tokenizer metadata
        raise StartupError(str(exc)) from None
    sampler.journal = journal
    m = sampler.manifest
    if m.meta.kind != "built":
        log.warning("manifest %s is %r: serving generated random tokens of its sizes (for scale tests, not training)",
                    m.root, m.meta.kind)
        return sampler
    problems = []
    for r in m.shards.iter_rows(named=True):
        size = storage.file_size(m.shard_location(r["path"]))  # local file or object store
        if size is None:
            problems.append(f"shard {r['path']} ({r['language']}): missing; rerun `curriculum build` with the same settings")
            continue
        if size != r["bytes"]:
            problems.append(f"shard {r['path']} ({r['language']}): {size} bytes, the manifest says {r['bytes']}; "
                            "rebuild that language or run `curriculum verify`")
    if settings.verify and not problems:
        from curriculum.verify import verify_manifest

        _, problems = verify_manifest(m.root)
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise StartupError(f"{len(problems)} problem(s) in manifest {storage.display(m.root)}:\n  " + "\n  ".join(problems[:20]) + more)
    return sampler


def _plan_json(plan: PhasePlan, planned_tokens: int) -> dict:
    s = phase_summary(plan)
    t = plan.table.sort("weight", descending=True)
    top, rest = t.head(MIXTURE_BARS), t.slice(MIXTURE_BARS)
    by_size = t.sort(["available_tokens", "language"], descending=[True, False])
    return {
        **{k: s[k] for k in ("name", "tokens", "start_step", "steps", "batch_tokens", "batch_sequences", "seq_len",
                             "tau", "mask_ratio", "max_epochs", "n_languages", "top10_share", "max_epochs_used",
                             "capped_languages", "warnings")},
        "index": plan.index,
        "phase": plan.phase.name,
        "variant": plan.phase.variant,
        "planned_tokens": planned_tokens,  # what the schedule serves: whole batches, warm-up included
        "top": [{k: (float(v) if isinstance(v, float) else v) for k, v in r.items() if k != "source"}
                for r in top.iter_rows(named=True)],
        "tail": None if rest.height == 0 else {
            "languages": rest.height, "weight": float(rest["weight"].sum()),
            "allotted_tokens": float(rest["allotted_tokens"].sum()),
        },
        # Columnar, largest language first: the epochs chart plots thousands of points.
        "epochs": {
            "language": by_size["language"].to_list(),
            "available_tokens": by_size["available_tokens"].to_list(),
            "epochs": [float(x) for x in by_size["epochs"].to_list()],
            "capped": by_size["capped"].to_list(),
        },
    }


def _mixture_json(plan: PhasePlan) -> dict:
    p, summary = plan.phase, phase_summary(plan)
    return {
        "phase": p.name, "variant": p.variant, "index": plan.index, "tokens": p.tokens, "seq_len": p.seq_len,
        "tau": summary["tau"], "mask_ratio": summary["mask_ratio"],
        "max_epochs": p.max_epochs, "n_languages": len(plan.languages),
        "segments": [{"tau": seg.tau, "tokens": seg.tokens} for seg in plan.segments],
        "languages": [
            {"language": r["language"], "source": r["source"], "available_tokens": int(r["available_tokens"]),
             "weight": float(r["weight"]), "allotted_tokens": float(r["allotted_tokens"]),
             "epochs": float(r["epochs"]), "capped": bool(r["capped"])}
            for r in plan.table.iter_rows(named=True)
        ],
        "warnings": plan.warnings,
    }


class Build:
    """One variant of the recipe as served: its Sampler and what the routes derive from its plan."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.original_plans = sampler.regime_plans()[0]  # the recipe's own plans, for comparison
        self._derive()

    def refresh(self) -> Build:
        """Recompute what derives from the plans when the sampler was amended since."""
        if self.version != self.sampler.journal_version:
            self._derive()
        return self

    def _derive(self) -> None:
        # Built in locals and assigned at the end: request threads read these while a background
        # thread re-derives them after an amendment.
        sampler = self.sampler
        st = sampler._state  # one consistent state for everything below
        version, plans, recipe, tl = len(st.amendments), st.plans[-1], st.regimes[-1].recipe, st.regimes[-1].timeline
        index = {k: i for i, k in enumerate(sampler.languages)}
        top_masks = []  # per phase: the TOP_GROUP heaviest languages (metrics' "top" group)
        for plan in plans:
            mask = np.zeros(len(sampler.languages), np.bool_)
            heavy = plan.table.sort("weight", descending=True)["language"].head(TOP_GROUP).to_list()
            mask[[index[k] for k in heavy]] = True
            top_masks.append(mask)
        ends = list(tl.tokens_start[1:]) + [tl.total_tokens]
        plans_json = [_plan_json(p, int(b - a)) for p, a, b in zip(plans, tl.tokens_start, ends)]
        mixture_json = {p.phase.name: _mixture_json(p) for p in plans}
        t0 = st.regimes[0].timeline  # the recipe's own timeline: what each phase would have served
        ends0 = list(t0.tokens_start[1:]) + [t0.total_tokens]
        original_json = ([_plan_json(p, int(b - a)) for p, a, b in zip(self.original_plans, t0.tokens_start, ends0)]
                         if version else None)
        self.top_masks, self.labels = top_masks, [p.label for p in recipe.phases]
        self.plans_json, self.mixture_json, self.original_json = plans_json, mixture_json, original_json
        self.version = version

    def consumed(self, step: int) -> list[int]:
        """Tokens of each phase served through global `step` (the schedule's own token count)."""
        tl = self.sampler.timeline
        info = self.sampler.schedule(min(step, self.sampler.total_steps - 1))
        return consumed_per_phase(info.tokens_before + info.global_batch * info.seq_len, list(tl.tokens_start),
                                  tl.total_tokens)


class Service:
    """Per-app state: the builds (default variant first), metrics, progress, readiness."""

    def __init__(self, settings: ServerSettings, sampler: Sampler, recipe: Recipe):
        self.settings = settings
        self.recipe = recipe  # with its variants; each Sampler holds a resolved copy
        self.default = Build(sampler)
        self.sampler = sampler
        self.variants = sorted({v for vs in recipe.variant_names().values() for v in vs})
        self._builds: dict[str | None, Build] = {None: self.default, sampler.variant: self.default}
        self._builds_lock = threading.Lock()
        self.token = settings.token_value.encode() if settings.token_value else None
        self.dictionary = pa.array(sampler.languages, pa.string())
        self.language_set = frozenset(sampler.languages)
        self.metrics = Metrics(sampler.build_id, sampler.recipe.name)
        self.progress = ProgressStore(sampler.build_id, settings.progress_history, settings.progress_log)
        self.failed_shards: dict[str, str] = {}
        self.started = time.time()
        self.amend_token = settings.amend_token_value.encode() if settings.amend_token_value else None
        self.live = Live(getattr(sampler, "journal", None), self.samplers, self.refresh_builds)
        self.policy = None
        self._pool: ThreadPoolExecutor | None = None

    def refresh_builds(self) -> None:
        for b in list(self._builds.values()):
            b.refresh()

    def samplers(self) -> list[Sampler]:
        """Every Sampler this process serves (the default and the variants built so far)."""
        seen: dict[int, Sampler] = {}
        for b in list(self._builds.values()):
            seen.setdefault(id(b.sampler), b.sampler)
        return list(seen.values())

    def build(self, variant: str | None) -> Build:
        """The build of `variant` (made on first use: call from a worker thread)."""
        hit = self._builds.get(variant)
        if hit is not None:
            return hit
        if variant not in self.variants:
            raise ApiError(404, "unknown_variant", f"no variant {variant!r}; variants: "
                           + (", ".join(self.variants) or "none (the recipe's phases have no variants)"))
        with self._builds_lock:
            if variant not in self._builds:
                try:
                    s = make_sampler(self.settings, self.sampler.manifest, self.recipe, variant, self.sampler.amendments)
                except (CurriculumError, ValueError) as exc:  # start-up planned every variant: rare
                    raise ApiError(409, "variant_unavailable", f"variant {variant!r} cannot be served: {exc}") from None
                self._builds[variant] = Build(s)
                log.info("variant %r: build %s", variant, s.build_id)
        return self._builds[variant]

    async def build_async(self, variant: str | None) -> Build:
        hit = self._builds.get(variant)
        return hit if hit is not None else await anyio.to_thread.run_sync(self.build, variant)

    # -- readiness -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self.failed_shards

    def shard_failed(self, exc: ShardError) -> ApiError:
        """Record a shard problem (the server stays up, /readyz false) and make the 503."""
        msg = str(exc)
        shard = next((r for r in self.sampler.manifest.shards["path"].to_list() if r in msg), None)
        self.failed_shards[shard or msg] = msg
        self.metrics.shard_errors.inc()
        self.metrics.ready.set(0)
        log.error("serving failed on a shard: %s", msg)
        return ApiError(503, "shard_unavailable", f"{msg}; the server stays up and /readyz is false until it is fixed",
                        shard=shard)

    def recheck(self) -> None:
        """Clear shard failures whose file opens again (rebuilt or restored)."""
        m = self.sampler.manifest
        for key in list(self.failed_shards):
            loc = m.shard_location(key)
            try:
                if m.is_remote:
                    if storage.file_size(loc) is None:  # the cache re-downloads and re-checks it on use
                        continue
                else:
                    open_shard(loc)
            except (ShardError, OSError, storage.StorageError):
                continue
            self.failed_shards.pop(key, None)
        if self.ready:
            self.metrics.ready.set(1)

    # -- batches ---------------------------------------------------------------------------

    def check_range(self, build: Build, start: int, count: int, rank: int, world_size: int) -> None:
        """Raise ApiError(400) unless the range's first and last steps, and the first step of each
        phase it enters, can be served (a later step that cannot aborts the stream)."""
        s = build.sampler
        try:
            s.timeline.rank_slice(s.schedule(start), rank, world_size)
            s.schedule(start + count - 1)
            for p0 in s.timeline.phase_start:
                if start < p0 < start + count:
                    s.timeline.rank_slice(s.schedule(p0), rank, world_size)
        except ScheduleError as exc:
            raise ApiError(400, "invalid_step", str(exc)) from None

    def _check_step(self, sampler: Sampler, step: int, rank: int, world_size: int) -> None:
        try:
            sampler.timeline.rank_slice(sampler.schedule(step), rank, world_size)
        except ScheduleError:
            # A journal change this replica has not seen may have lengthened the run.
            if not self.live.enabled or not self.live.sync():
                raise
            sampler.timeline.rank_slice(sampler.schedule(step), rank, world_size)

    def encode(self, variant: str | None, step: int, rank: int, world_size: int, labels: str,
               compression: str | None, publish_to: int | None = None) -> wire.EncodedBatch:
        """Assemble and encode one batch (worker thread); counted in the metrics. ScheduleError
        becomes a 400, ShardError a 503 (and /readyz false), a journal this replica has not
        applied yet a 503 to retry."""
        build = self.build(variant)
        t0 = time.perf_counter()
        try:
            # Validate before publishing the step: a bad request must not raise the watermark.
            self._check_step(build.sampler, step, rank, world_size)
            self.live.ensure(step, publish_to)
            b = build.sampler.batch(step, rank, world_size)
        except ScheduleError as exc:
            raise ApiError(400, "invalid_step", str(exc)) from None
        except ShardError as exc:
            raise self.shard_failed(exc) from None
        except Behind as exc:
            raise ApiError(503, "journal_behind", str(exc), journal_version=exc.version) from None
        except JournalBroken as exc:
            raise ApiError(503, "journal_broken", str(exc)) from None
        md = wire.batch_metadata(b.build_id, b.info, b.rank, b.world_size, run_id=build.sampler.run_id,
                                 journal_version=b.journal_version)
        # The variable-length columns in one kernel call (numpy took ~0.1 ms a batch, GIL held).
        parts = wire_parts(b.labels, b.cu_seqlens)
        enc = wire.encode_batch(b, md, self.dictionary, labels=labels, compression=compression, parts=parts)
        p = b.info.phase_index
        self.metrics.observe_batch(build.labels[p], build.top_masks[p], b.lang, b.info.seq_len, time.perf_counter() - t0)
        return enc

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The threads that assemble batches (`batch_threads`), awaited with `run_in_executor`:
        half the event-loop cost of anyio's thread hop, and a bound on batches in flight (each
        holds its arrays) however many clients wait. Few: most of a batch's CPU time is Python
        (GIL held), and three threads took twice the CPU per batch of one (GIL hand-offs)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.batch_threads, thread_name_prefix="batch")
        return self._pool

    def close_pool(self) -> None:
        """Let the batch threads end (the app's shutdown; a later request starts a new pool)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def encode_future(self, variant: str | None, step: int, rank: int, world_size: int, labels: str,
                      compression: str | None, publish_to: int | None = None) -> asyncio.Future[wire.EncodedBatch]:
        """`encode` started in the batch pool (call on the event loop); await or cancel the future."""
        return asyncio.get_running_loop().run_in_executor(self.pool, self.encode, variant, step, rank, world_size,
                                                          labels, compression, publish_to)

    async def encode_async(self, variant: str | None, step: int, rank: int, world_size: int, labels: str,
                           compression: str | None) -> wire.EncodedBatch:
        return await self.encode_future(variant, step, rank, world_size, labels, compression)

    # -- progress --------------------------------------------------------------------------

    def progress_summary(self, limit: int = SERIES_POINTS) -> dict:
        recs = self.progress.records()
        consumed = self.default.refresh().consumed(recs[-1].step) if recs else [0] * len(self.sampler.plans)
        return {**progress_summary(recs, limit), "consumed_tokens": consumed, "ready": self.ready}


# -- the app ----------------------------------------------------------------------------------

def _error(status: int, code: str, message: str, headers: dict | None = None, **extra: object) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **{k: v for k, v in extra.items() if v is not None}},
                        status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict]]:
    where = {"path": "path parameter", "query": "query parameter", "body": "body field", "header": "header"}
    details = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ())]
        kind = where.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:]) or "(whole body)"
        got = e.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) and len(repr(got)) < 80 else ""
        details.append({"param": name, "in": loc[0] if loc else None, "problem": e.get("msg", ""), "message":
                        f"{kind} {name!r}: {e.get('msg', 'invalid')}{shown}"})
    return "; ".join(d["message"] for d in details), details


def _load_static() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files, read once into memory (requests never touch the filesystem)."""
    base = resources.files("sampler_server") / "static"
    return {name: ((base / name).read_bytes(), media) for name, media in STATIC_FILES.items()}


def create_app(settings: ServerSettings, *, sampler: Sampler | None = None) -> FastAPI:
    """The FastAPI app for one manifest + recipe + seed. Builds (and checks) the Sampler of the
    default variant unless one is given; raises StartupError when the inputs cannot be served."""
    sampler = sampler if sampler is not None else open_sampler(settings)
    if not hasattr(sampler, "journal"):  # a Sampler made by the caller: attach the journal here
        try:
            sampler.journal = open_journal(settings.journal, settings.recipe, required=settings.journal is not None,
                                           manifest=settings.manifest)
            if sampler.journal is not None and sampler.journal.entries:
                sampler.amend(sampler.journal.entries)
        except (CurriculumError, OSError) as exc:
            raise StartupError(str(exc)) from None
    svc = Service(settings, sampler, load_recipe(settings.recipe))
    if settings.policy != "none":
        if not svc.live.enabled:
            raise StartupError(f"--policy {settings.policy} amends the journal, and this server has none writable; "
                               "pass --journal PATH")
        from sampler_server.policy import LossBalancePolicy

        svc.policy = LossBalancePolicy(settings.policy_every, settings.policy_lookahead, settings.policy_max_change,
                                       settings.policy_bounds)
    if settings.warmup:
        try:
            sampler.batch(0)  # loads the kernels, opens step 0's shards: the first request is not slow
        except ShardError as exc:
            raise StartupError(f"warm-up (step 0) failed: {exc}") from None
    static = _load_static()
    variant_plans = _variant_plans(svc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("sampler ready: build %s, recipe %r, %d steps, %d languages, journal %s (version %d), event loop %s",
                 sampler.build_id, sampler.recipe.name, sampler.total_steps, len(sampler.languages),
                 svc.live.journal.path if svc.live.enabled else "off", svc.live.version,
                 type(asyncio.get_running_loop()).__module__.partition(".")[0])
        poller = asyncio.create_task(_poll_journal(svc)) if svc.live.enabled else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
            svc.close_pool()

    docs = svc.token is None  # with a token the OpenAPI schema is not served unauthenticated
    app = FastAPI(title="language-curriculum sampler", version=wire.WIRE_VERSION, lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.code == "journal_behind" else None
        return _error(exc.status, exc.code, exc.message, headers=headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _describe_validation(exc)
        return _error(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = (f"no route {request.method} {request.url.path}; see the README's HTTP API" if exc.status_code == 404
               else f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else str(exc.detail))
        return _error(exc.status_code, code, msg, headers=getattr(exc, "headers", None))

    def _token_ok(presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), svc.token)

    # Dependencies are coroutines: FastAPI runs a plain `def` dependency in a worker thread, a
    # thread hop per request for a header check.
    async def require_token(request: Request) -> None:
        if svc.token is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if not auth:
            raise ApiError(401, "unauthorized", "this server requires a bearer token: send 'Authorization: Bearer <token>'")
        if scheme.lower() != "bearer" or not _token_ok(value.strip()):
            raise ApiError(401, "unauthorized", "invalid bearer token")

    # -- health (never behind the token) ---------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "build_id": sampler.build_id}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not svc.ready:
            svc.recheck()
        body = {"ready": svc.ready, "build_id": sampler.build_id}
        if not svc.ready:
            body["problems"] = list(svc.failed_shards.values())
        return JSONResponse(body, status_code=200 if svc.ready else 503)

    # -- the dashboard page: the page needs the token (header or ?token=), its assets are code --

    @app.get("/", include_in_schema=False)
    async def index(request: Request, token: str | None = None) -> Response:
        if svc.token is not None and not _token_ok(token):
            try:
                await require_token(request)
            except ApiError:
                return _error(401, "unauthorized", "this dashboard needs the server's token: open /?token=<token>")
        body, media = static["index.html"]
        return Response(body, media_type=media, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static or name == "index.html":
            raise ApiError(404, "not_found", f"no static file {name!r}; files: dashboard.js, dashboard.css")
        body, media = static[name]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    api = APIRouter(dependencies=[Depends(require_token)])

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @api.get("/v1/batches/{step}")
    async def batch(step: int, rank: Rank = 0, world_size: World = 1, labels: Labels = "sparse",
                    compression: Comp = "none", variant: Variant = None) -> Response:
        """One rank's batch at a global step, as an Arrow IPC stream (see trainer_client.wire)."""
        comp = None if compression == "none" else compression
        enc = await svc.encode_async(variant, step, rank, world_size, labels, comp)
        build = svc.build(variant)  # made by now
        # The body is a view of the encoder's buffer: not copied on its way to the socket.
        return Response(enc.standalone(), media_type=wire.MEDIA_TYPE, headers={
            "X-Build-Id": enc.build_id, "X-Run-Id": build.sampler.run_id,
            "X-Journal-Version": str(svc.live.version), "Cache-Control": "no-store"})

    @api.get("/v1/stream")
    async def stream(rank: Rank = 0, world_size: World = 1, start: int = 0, count: Count = None,
                     labels: Labels = "sparse", compression: Comp = "none", variant: Variant = None) -> StreamingResponse:
        """Consecutive batches start, start+1, ... of one rank in one response."""
        build = await svc.build_async(variant)
        if count is None:
            count = max(build.sampler.total_steps - start, 1)
        if count < 1:
            raise ApiError(400, "invalid_count", f"count must be >= 1, got {count}")
        svc.check_range(build, start, count, rank, world_size)
        comp = None if compression == "none" else compression
        # Batches are assembled and encoded `prefetch` ahead in worker threads, in parallel; the
        # event loop only frames the encoded messages in order and sends them.
        joiner = wire.StreamJoiner()
        depth = svc.settings.prefetch + 1
        pending: deque[asyncio.Future[wire.EncodedBatch]] = deque()
        steps = iter(range(start, start + count))

        last = start + count - 1

        def submit() -> None:
            s = next(steps, None)
            if s is not None:
                # The watermark goes up a window of the stream's steps at a time (one journal
                # round trip per window instead of per step); amendments then start after it.
                window_end = min(last, s - (s - start) % STREAM_PUBLISH_WINDOW + STREAM_PUBLISH_WINDOW - 1)
                pending.append(svc.encode_future(variant, s, rank, world_size, labels, comp, window_end))

        for _ in range(depth):
            submit()
        try:
            await pending[0]  # a problem at the first step is still a proper 4xx / 503
        except BaseException:
            for t in pending:
                t.cancel()
            raise

        def framed(enc: wire.EncodedBatch) -> list[bytes | memoryview]:
            # The joiner decides the framing (EOS + schema header when the schema changes) from a
            # copy of the batch without its body; the body goes out as a view of the encoder's
            # buffer, so the event loop copies no batch bytes (uvicorn's chunk framing copies once).
            head = joiner.add(dataclasses.replace(enc, body_size=0))
            return [head, enc.body] if head else [enc.body]

        async def body() -> AsyncIterator[bytes | memoryview]:
            try:
                while pending:
                    enc = await pending.popleft()
                    submit()
                    for part in framed(enc):
                        yield part
                tail = joiner.close()
                if tail:
                    yield tail
            except ApiError as exc:
                # Headers are out: abort the body so the client sees a failed transfer, not a short stream.
                log.error("stream rank=%d start=%d aborted: %s", rank, start, exc.message)
                raise
            finally:
                for t in pending:
                    t.cancel()

        return StreamingResponse(body(), media_type=wire.MEDIA_TYPE, headers={
            "X-Build-Id": build.sampler.build_id_at(start), "X-Run-Id": build.sampler.run_id,
            "X-Batch-Start": str(start), "X-Batch-Count": str(count),
            "Cache-Control": "no-store"})

    @api.get("/v1/recipe")
    async def recipe() -> dict:
        r, tl = sampler.recipe, sampler.timeline
        return {
            "recipe": svc.recipe.model_dump(mode="json"), "fingerprint": svc.recipe.fingerprint(),
            "variant": sampler.variant, "variants": svc.recipe.variant_names(), "build_id": sampler.build_id,
            "run_id": sampler.run_id, "journal_version": sampler.journal_version,
            "seed": sampler.seed, "manifest_fingerprint": sampler.manifest.fingerprint,
            "total_steps": sampler.total_steps, "total_tokens": tl.total_tokens, "languages": len(sampler.languages),
            "tokenizer": sampler.tokenizer.model_dump(mode="json"),
            "phases": [{"name": p.name, "variant": p.variant, "start_step": s0, "steps": p.steps, "seq_len": p.seq_len,
                        "batch_sequences": p.batch_sequences, "batch_tokens": p.batch_tokens, "tokens": p.tokens}
                       for p, s0 in zip(r.phases, tl.phase_start)],
        }

    @api.get("/v1/schedule")
    async def schedule(step: StepQuery = None, variant: Variant = None) -> dict:
        s = (await svc.build_async(variant)).sampler
        if step is None:
            return {"build_id": s.build_id, "variant": s.variant, "total_steps": s.total_steps,
                    "total_tokens": s.timeline.total_tokens, "languages": len(s.languages),
                    "tokenizer": s.tokenizer.model_dump(mode="json"),
                    "phases": [{"name": p.name, "variant": p.variant, "start_step": s0, "steps": p.steps,
                                "seq_len": p.seq_len, "global_batch": p.batch_sequences, "tokens_start": t0}
                               for p, s0, t0 in zip(s.recipe.phases, s.timeline.phase_start, s.timeline.tokens_start)]}
        try:
            info: StepInfo = s.schedule(step)
        except ScheduleError as exc:
            raise ApiError(400, "invalid_step", str(exc)) from None
        return {"build_id": s.build_id, **info.to_dict()}

    @api.get("/v1/mixture")
    async def mixture(phase: PhaseQuery = None, variant: Variant = None) -> dict:
        build = (await svc.build_async(variant)).refresh()
        views, bid = build.mixture_json, build.sampler.build_id
        if phase is None:
            return {"build_id": bid, "phases": list(views.values())}
        names = list(views)
        key = names[int(phase)] if phase.isdigit() and int(phase) < len(names) else phase
        if key not in views:
            raise ApiError(404, "unknown_phase", f"no phase {phase!r}; phases: {', '.join(names)} (or their index 0..{len(names) - 1})")
        return {"build_id": bid, **views[key]}

    @api.post("/v1/progress", status_code=201)
    async def post_progress(report: ProgressReport) -> dict:
        unknown = sorted(set(report.loss_by_language) - svc.language_set)
        if unknown:
            raise ApiError(422, "unknown_language", f"loss_by_language: unknown language key(s) {', '.join(unknown[:5])}"
                           f"{' ...' if len(unknown) > 5 else ''}; use the keys of GET /v1/mixture")
        if report.step >= sampler.total_steps:
            raise ApiError(400, "invalid_step", f"step {report.step} is past the last step ({sampler.total_steps - 1})")
        rec = await anyio.to_thread.run_sync(svc.progress.add, report)
        await anyio.to_thread.run_sync(svc.live.note_reported, rec.step)
        svc.metrics.progress_step.set(rec.step)
        svc.metrics.progress_tokens.set(rec.tokens)
        proposed = None
        if svc.policy is not None:
            proposed = await anyio.to_thread.run_sync(svc.policy.maybe_amend, svc, rec.step)
        return {"stored": progress_json([rec])[0], "reports": len(svc.progress),
                **({"amendment": proposed.model_dump(mode="json", exclude_none=True)} if proposed else {})}

    async def require_amend_token(request: Request) -> None:
        if svc.amend_token is None:
            raise ApiError(403, "amendments_disabled", "this server takes no amendments: start it with --amend-token "
                           "(or --token) to allow POST /v1/amendments")
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if not auth:
            raise ApiError(401, "unauthorized", "amendments need a bearer token: send 'Authorization: Bearer <token>'")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), svc.amend_token):
            raise ApiError(401, "unauthorized", "invalid bearer token for amendments")

    @api.get("/v1/amendments")
    async def get_amendments() -> dict:
        await anyio.to_thread.run_sync(svc.live.sync)
        return await anyio.to_thread.run_sync(svc.live.describe)

    @app.post("/v1/amendments", status_code=201, dependencies=[Depends(require_amend_token)])
    async def post_amendment(amendment: Amendment) -> dict:
        """Append an amendment to the journal (see curriculum.amend); 409 when it would change a
        step already served or reported, 422 naming the field that cannot apply."""
        if not svc.live.enabled:
            raise ApiError(503, "journal_unavailable", "this server has no writable amendment journal; start it with "
                           "--journal PATH on a writable filesystem")
        a = amendment.model_copy(update={"created_at": None})
        try:
            stored = await anyio.to_thread.run_sync(svc.live.admit, a)
        except AmendmentConflict as exc:
            raise ApiError(409, "amendment_in_the_past", str(exc), earliest_from_step=exc.earliest) from None
        except AmendmentError as exc:
            raise ApiError(422, "invalid_amendment", str(exc), fields=exc.fields or None) from None
        except JournalBroken as exc:
            raise ApiError(503, "journal_broken", str(exc)) from None
        view = await anyio.to_thread.run_sync(svc.live.describe)
        return {"stored": stored.model_dump(mode="json", exclude_none=True), "version": view["version"],
                "build_id": svc.sampler.build_id_at(stored.from_step), "earliest_from_step": view["earliest_from_step"]}

    @api.get("/v1/progress")
    async def get_progress(limit: Limit = SERIES_POINTS) -> dict:
        return await anyio.to_thread.run_sync(svc.progress_summary, limit)

    @api.get("/v1/dashboard")
    async def dashboard() -> dict:
        return {
            "build_id": sampler.build_id, "recipe": sampler.recipe.name, "variant": sampler.variant,
            "seed": sampler.seed, "manifest": Path(storage.display(sampler.manifest.root)).name, "total_steps": sampler.total_steps,
            "total_tokens": sampler.timeline.total_tokens, "languages": len(sampler.languages),
            "epoch_warning": EPOCH_WARNING, "top_group": TOP_GROUP, "started": svc.started,
            "phases": svc.default.refresh().plans_json, "variant_phases": variant_plans,
            "original_phases": svc.default.original_json,
            "amendments": (await anyio.to_thread.run_sync(svc.live.describe))["amendments"],
            "live": await anyio.to_thread.run_sync(svc.progress_summary, SERIES_POINTS),
        }

    app.include_router(api)

    async def plain_batch(request: Request, step: int, rank: int, world_size: int, labels: str, compression: str,
                          variant: str | None) -> Response:
        # The route's own dependency and endpoint, minus FastAPI's parameter solving.
        try:
            await require_token(request)
            return await batch(step, rank, world_size, labels, compression, variant)  # type: ignore[arg-type]
        except ApiError as exc:
            return await _api_error(request, exc)

    route = next(r for r in api.routes if getattr(r, "path", None) == "/v1/batches/{step}")
    # Middleware: last added runs first. The lane runs inside the metrics, which label its
    # requests with the route it sets in the scope.
    app.add_middleware(BatchLane, route=route, handle=plain_batch)
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)
    return app


async def _poll_journal(svc: Service) -> None:
    """Apply journal changes made elsewhere (other replicas, `curriculum amend`) ahead of need."""
    while True:
        await asyncio.sleep(svc.settings.journal_poll)
        try:
            await anyio.to_thread.run_sync(svc.live.sync)
        except JournalBroken:
            pass  # logged; requests past the watermark get 503 until the journal is fixed
        except Exception:  # noqa: BLE001 - the poller must outlive any one failure
            log.exception("journal poll failed")


def _variant_plans(svc: Service) -> list[dict]:
    """Plans of the phase variants the default build does not serve (the dashboard shows them too)."""
    if not svc.variants:
        return []
    served = {(p.phase.name, p.phase.variant) for p in svc.sampler.plans}
    return [_plan_json(p, int(p.phase.tokens)) for p in plan_all_variants(svc.recipe, svc.sampler.manifest)
            if (p.phase.name, p.phase.variant) not in served]


def create_app_from_env() -> FastAPI:
    """uvicorn factory for `--workers N`: each spawned worker reads SAMPLER_* from the environment."""
    logging.basicConfig(level=os.environ.get("SAMPLER_LOG_LEVEL", "info").upper())
    return create_app(ServerSettings())  # type: ignore[call-arg]  (fields come from the environment)


__all__ = ["ApiError", "StartupError", "create_app", "create_app_from_env", "open_sampler"]
