"""The sampler's HTTP service: batches as Arrow IPC, the control plane, metrics and the dashboard.

Routes parse, call the `Service` (batches are assembled and encoded in its few batch threads, off
the event loop) and format; the wire format lives in `trainer_client.wire`.
Every invalid request is a 4xx with a JSON body {"error", "message"} that says what to fix; a
shard that goes missing or corrupt while serving is a 503 naming it, and `/readyz` turns false
until the file is back. No request parameter is ever used to build a filesystem path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import re
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from curriculum import storage
from curriculum.amend import Amendment, AmendmentConflict, AmendmentError
from curriculum.errors import CurriculumError
from curriculum.plan import EPOCH_WARNING, plan_all_variants
from curriculum.recipe import load_recipe
from curriculum.schedule import ScheduleError, StepInfo
from curriculum.shards import ShardError
from sampler_server.lane import MAX_DIGITS, BatchLane
from sampler_server.limits import BodyLimit
from sampler_server.live import JournalBroken, JournalUnavailable, claim_journal, open_journal
from sampler_server.metrics import TOP_GROUP, MetricsMiddleware, PROMETHEUS_CONTENT_TYPE
from sampler_server.progress import ProgressReport, progress_json
from sampler_server.sampler import Sampler
from sampler_server.service import SERIES_POINTS, ApiError, Service, StartupError, open_sampler, phase_plan_json
from sampler_server.settings import ServerSettings
from trainer_client import wire

log = logging.getLogger("sampler_server")

STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "index.html": "text/html"}
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the CLI's, for every worker of --workers N
_TOKEN_IN_QUERY = re.compile(r"(?i)([?&]token=)[^&\s]*")


class RedactTokens(logging.Filter):
    """Access-log lines show `?token=***`: a dashboard opened as /?token=… put the secret in the
    log (the page now takes it as a #fragment, which browsers never send; old links still work)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a.lower() for a in record.args):
            record.args = tuple(_TOKEN_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True
STREAM_PUBLISH_WINDOW = 16  # /v1/stream raises the amendment watermark this many of its steps at a time
PLAIN_INT = re.compile(rf"-?[0-9]{{1,{MAX_DIGITS}}}")


def _plain_int(value: object) -> object:
    """Integer parameters are plain ASCII decimals, as the batch lane reads them: pydantic alone
    would take ' 1', '+1', '1_000' and '1.0', and ints too long to print in an error message."""
    if isinstance(value, str) and not PLAIN_INT.fullmatch(value):
        raise PydanticCustomError("int_parsing", "Input should be a valid integer, unable to parse string as an "
                                  f"integer: use ASCII digits 0-9 (at most {MAX_DIGITS}) with an optional leading '-'")
    return value


PlainInt = BeforeValidator(_plain_int)

# Query parameters shared by the batch routes (module level: FastAPI resolves them by name).
StepPath = Annotated[int, PathParam(description="global step, 0 <= step < total steps"), PlainInt]
Rank = Annotated[int, Query(description="rank of the trainer process, 0 <= rank < world_size"), PlainInt]
World = Annotated[int, Query(description="number of trainer ranks; must divide the global batch"), PlainInt]
Start = Annotated[int, Query(description="first global step of the stream"), PlainInt]
Labels = Annotated[Literal["sparse", "dense"], Query(description="label encoding")]
Comp = Annotated[Literal["none", "zstd"], Query(description="Arrow buffer compression")]
Count = Annotated[int | None, Query(description="batches; default: to the last step"), PlainInt]
StepQuery = Annotated[int | None, Query(description="global step; omit for the phase table"), PlainInt]
PhaseQuery = Annotated[str | None, Query(description="phase name or index; omit for all")]
Variant = Annotated[str | None, Query(description="phase variant to serve; omit for the server's default")]
Limit = Annotated[int, Query(ge=1, le=100_000, description="progress points to return"), PlainInt]


# -- the app ----------------------------------------------------------------------------------

def _error(status: int, code: str, message: str, headers: dict | None = None, **extra: object) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **{k: v for k, v in extra.items() if v is not None}},
                        status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict]]:
    where = {"path": "path parameter", "query": "query parameter", "body": "body field", "header": "header"}
    details = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ())]
        if e.get("type") == "json_invalid":  # loc is ("body", character offset): say so
            problem = (e.get("ctx") or {}).get("error", "invalid")
            message = f"request body: invalid JSON at character {loc[-1]} ({problem}); send one JSON object"
            details.append({"param": "(whole body)", "in": "body", "problem": problem, "message": message})
            continue
        if loc == ["body"] and isinstance(e.get("input"), bytes):  # a body FastAPI did not read as JSON
            message = "request body: not JSON; send one JSON object with 'Content-Type: application/json'"
            details.append({"param": "(whole body)", "in": "body", "problem": e.get("msg", ""), "message": message})
            continue
        kind = where.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:]) or "(whole body)"
        got = e.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) and len(repr(got)) < 80 else ""
        problem = e.get("msg", "invalid").removeprefix("Value error, ")  # pydantic's prefix for our validators' words
        details.append({"param": name, "in": loc[0] if loc else None, "problem": problem, "message":
                        f"{kind} {name!r}: {problem}{shown}"})
    return "; ".join(d["message"] for d in details), details


def _load_static() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files, read once into memory (requests never touch the filesystem)."""
    base = resources.files("sampler_server") / "static"
    return {name: ((base / name).read_bytes(), media) for name, media in STATIC_FILES.items()}


def _query_names(route: object) -> tuple[str, ...]:
    """The query parameters `route` (a FastAPI APIRoute) and its dependencies declare, sorted."""
    names: set[str] = set()
    todo = [getattr(route, "dependant", None)]
    while todo:
        d = todo.pop()
        if d is not None:
            names.update(f.alias for f in d.query_params)
            todo.extend(d.dependencies)
    return tuple(sorted(names))


def create_app(settings: ServerSettings, *, sampler: Sampler | None = None) -> FastAPI:
    """The FastAPI app for one manifest + recipe + seed. Builds (and checks) the Sampler of the
    default variant unless one is given; raises StartupError when the inputs cannot be served."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
    sampler = sampler if sampler is not None else open_sampler(settings)
    if not hasattr(sampler, "journal"):  # a Sampler made by the caller: attach the journal here
        try:
            sampler.journal = open_journal(settings.journal, settings.recipe, required=settings.journal is not None,
                                           manifest=settings.manifest)
            claim_journal(sampler.journal, sampler)
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
        except (ShardError, ValueError) as exc:
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
    # FastAPI's /docs page loads Swagger UI from a CDN: blank on an air-gapped cluster. fastapi-offline
    # serves the same page with the scripts from the package (/static-offline-docs/...).
    app = (FastAPIOffline if docs else FastAPI)(
        title="language-curriculum sampler", version=wire.WIRE_VERSION, lifespan=lifespan,
        docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.code in ("journal_behind", "journal_unavailable") else None
        return _error(exc.status, exc.code, exc.message, headers=headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (denied := await _token_first(request)) is not None:
            return denied
        message, details = _describe_validation(exc)
        if any(e.get("type") == "json_invalid" for e in exc.errors()):  # unreadable, like the other bad bodies
            return _error(400, "invalid_body", message, details=details)
        return _error(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = (f"no route {request.method} {request.url.path}; see the README's HTTP API" if exc.status_code == 404
               else f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else str(exc.detail))
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read the body as JSON
            if (denied := await _token_first(request)) is not None:
                return denied
            why = ("nested too deeply" if isinstance(exc.__cause__, RecursionError) else
                   "not UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else "a number too long, or unreadable")
            code, msg = "invalid_body", f"request body: not readable as JSON ({why}); send one JSON object"
        return _error(exc.status_code, code, msg, headers=getattr(exc, "headers", None))

    async def _token_first(request: Request) -> JSONResponse | None:
        # FastAPI parses a JSON body before it runs the route's dependencies: without this, a
        # request with no token and a malformed body would get a 400/422 where it must get a 401.
        for dep in getattr(request.scope.get("route"), "dependencies", ()):
            if dep.dependency in (require_token, require_amend_token):
                try:
                    await dep.dependency(request)
                except ApiError as exc:
                    return await _api_error(request, exc)
        return None

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

    known_params: dict[int, tuple[str, ...]] = {}  # id(route) -> its query parameters, sorted

    async def single_valued(request: Request) -> None:
        # FastAPI takes the last of repeated values (`rank=1&rank=2` would silently serve rank 2)
        # and ignores names it does not know (`?rnak=1` would silently serve rank 0).
        route = request.scope.get("route")
        names = known_params.get(id(route))
        if names is None:
            names = known_params[id(route)] = _query_names(route)
        keys = [key for key, _ in request.query_params.multi_items()]
        for key in keys:
            if key not in names:
                known = f"its parameters are {', '.join(names)}" if names else "it takes no query parameters"
                raise ApiError(422, "invalid_request",
                               f"unknown query parameter {key[:80]!r} for {request.url.path}; {known}")
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise ApiError(422, "invalid_request", f"query parameter {key!r} is given more than once; give it once")
            seen.add(key)

    # -- health (never behind the token) ---------------------------------------------------

    # HEAD too: uptime checkers probe with it (405 marked a healthy replica down). Registered apart,
    # outside the schema: one route for both gave the OpenAPI schema a duplicate operation id.
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "build_id": sampler.build_id}

    def problems() -> list[str]:
        """Why this replica is not ready: failed shards, and a journal that cannot be applied or
        read (it makes every step above the watermark a 503)."""
        return list(svc.failed_shards.values()) + [x for x in (svc.live.error, svc.live.unavailable) if x]

    @app.head("/readyz", include_in_schema=False)
    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not svc.ready:
            await anyio.to_thread.run_sync(svc.recheck)  # S3 calls: never on the event loop
        bad = problems()
        body = {"ready": not bad, "build_id": sampler.build_id}
        if bad:
            body["problems"] = bad
        return JSONResponse(body, status_code=503 if bad else 200)

    # -- the dashboard page: the page needs the token (header or ?token=), its assets are code --

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> Response:
        # The page holds no data (its script fetches everything with the token, and says so on a
        # 401), so it needs no token itself: it used to, and a reload, after the script had moved
        # ?token= from the address bar into sessionStorage, was a bare 401 page.
        body, media = static["index.html"]
        return Response(body, media_type=media, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static or name == "index.html":
            raise ApiError(404, "not_found", f"no static file {name!r}; files: dashboard.js, dashboard.css")
        body, media = static[name]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    api = APIRouter(dependencies=[Depends(require_token), Depends(single_valued)])

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        svc.metrics.ready.set(0 if problems() else 1)  # as /readyz says: a broken journal too
        return Response(svc.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @api.get("/v1/batches/{step}")
    async def batch(step: StepPath, rank: Rank = 0, world_size: World = 1, labels: Labels = "sparse",
                    compression: Comp = "none", variant: Variant = None) -> Response:
        """One rank's batch at a global step, as an Arrow IPC stream (see trainer_client.wire)."""
        comp = None if compression == "none" else compression
        # A variant's first build (planning: can take seconds) runs on anyio's threads, not on
        # the few batch threads that every other request waits for.
        build = await svc.build_async(variant)
        enc = await svc.encode_async(variant, step, rank, world_size, labels, comp)
        # The body is a view of the encoder's buffer: not copied on its way to the socket.
        return Response(enc.standalone(), media_type=wire.MEDIA_TYPE, headers={
            "X-Build-Id": enc.build_id, "X-Run-Id": build.sampler.run_id,
            "X-Journal-Version": str(svc.live.version), "Cache-Control": "no-store"})

    @api.get("/v1/stream")
    async def stream(rank: Rank = 0, world_size: World = 1, start: Start = 0, count: Count = None,
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

    def phase_table(s: Sampler) -> list[dict]:
        """The phases of `s` (a variant's too), as /v1/recipe and /v1/schedule list them."""
        tl = s.timeline
        return [{"name": p.name, "variant": p.variant, "start_step": s0, "steps": p.steps, "seq_len": p.seq_len,
                 "batch_sequences": p.batch_sequences, "global_batch": p.batch_sequences, "batch_tokens": p.batch_tokens,
                 "tokens": p.tokens, "tokens_start": t0,
                 # so a trainer can check its world size against every step before it starts
                 "warmup_steps": lay.warm_steps, "warmup_batch_sizes": sorted({int(b) for b in np.diff(lay.warm_first)})}
                for p, s0, t0, lay in zip(s.recipe.phases, tl.phase_start, tl.tokens_start, tl.layouts)]

    @api.get("/v1/recipe")
    async def recipe() -> dict:
        tl = sampler.timeline
        return {
            "recipe": svc.recipe.model_dump(mode="json"), "fingerprint": svc.recipe.fingerprint(),
            "variant": sampler.variant, "variants": svc.recipe.variant_names(), "build_id": sampler.build_id,
            "run_id": sampler.run_id, "journal_version": sampler.journal_version,
            "seed": sampler.seed, "manifest_fingerprint": sampler.manifest.fingerprint,
            "total_steps": sampler.total_steps, "total_tokens": tl.total_tokens, "languages": len(sampler.languages),
            "tokenizer": sampler.tokenizer.model_dump(mode="json"),
            "phases": phase_table(sampler),
        }

    @api.get("/v1/schedule")
    async def schedule(step: StepQuery = None, variant: Variant = None) -> dict:
        s = (await svc.build_async(variant)).sampler
        if step is None:
            return {"build_id": s.build_id, "variant": s.variant, "total_steps": s.total_steps,
                    "total_tokens": s.timeline.total_tokens, "languages": len(s.languages),
                    "tokenizer": s.tokenizer.model_dump(mode="json"),
                    "phases": phase_table(s)}
        # Read the journal first: another process of this replica (--workers, a balancer) may have
        # served the step with an entry this one has not polled yet, and a trainer checks a trained
        # step's build id here after a failover (trainer_client.client, the journal check). Every
        # entry in force at an already served step is in the journal (the watermark rule).
        # A journal that cannot be applied or read leaves the applied state, which is right for
        # every step already served (the watermark rule); /readyz reports the problem.
        with contextlib.suppress(JournalBroken, JournalUnavailable):
            await anyio.to_thread.run_sync(svc.live.sync)
        s = (await svc.build_async(variant)).sampler  # the amended build, if sync applied an entry
        try:
            info: StepInfo = s.schedule(step)
        except ScheduleError as exc:
            raise ApiError(400, "invalid_step", str(exc)) from None
        return {"build_id": s.build_id_at(step), **info.to_dict()}  # an amended step's, as its batch says

    @api.get("/v1/mixture")
    async def mixture(phase: PhaseQuery = None, variant: Variant = None) -> dict:
        build = (await svc.build_async(variant)).refresh()
        views, bid = build.mixture_json, build.sampler.build_id
        if phase is None:
            return {"build_id": bid, "phases": list(views.values())}
        names = list(views)
        key = {str(i): n for i, n in enumerate(names)}.get(phase, phase)  # an index "0".."n-1", else a name
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
        try:
            await anyio.to_thread.run_sync(svc.live.note_reported, rec.step)
        except JournalUnavailable:  # stored all the same: the steps it names were published when served
            pass
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
        try:
            await anyio.to_thread.run_sync(svc.live.sync)
            # `enabled`: this server follows a journal; `accepts_posts`: it also takes POSTs (an amend token).
            out = await anyio.to_thread.run_sync(svc.live.describe)
        except JournalBroken:  # listed with its `error`: this is where an operator looks for it
            out = await anyio.to_thread.run_sync(svc.live.describe)
        except JournalUnavailable as exc:
            raise ApiError(503, "journal_unavailable", str(exc)) from None
        return {**out, "accepts_posts": svc.amend_token is not None and svc.live.journal is not None}

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
        except JournalUnavailable as exc:
            raise ApiError(503, "journal_unavailable", str(exc)) from None
        view = await anyio.to_thread.run_sync(svc.live.describe)
        return {"stored": stored.model_dump(mode="json", exclude_none=True), "version": view["version"],
                "build_id": svc.sampler.build_id_at(stored.from_step), "earliest_from_step": view["earliest_from_step"]}

    @api.get("/v1/progress")
    async def get_progress(limit: Limit = SERIES_POINTS) -> dict:
        return await anyio.to_thread.run_sync(svc.progress_summary, limit)

    def current_variant_plans() -> list[dict]:
        """The other variants' phases as they are served now: a variant's build, once made (an
        amendment's admission makes every variant's), carries the amendments; until then the
        recipe's plan is what it would serve. (The list was computed once at start-up, and a
        variant's card kept its recipe τ after an amendment changed it.)"""
        out = []
        for entry in variant_plans:
            built = svc.built(entry["variant"])
            if built is None:
                out.append(entry)
                continue
            out.append(next((p for p in built.refresh().plans_json if p["phase"] == entry["phase"]), entry))
        return out

    @api.get("/v1/dashboard")
    async def dashboard() -> dict:
        return {
            "build_id": sampler.build_id, "recipe": sampler.recipe.name, "variant": sampler.variant,
            "seed": sampler.seed, "manifest": Path(storage.display(sampler.manifest.root)).name, "total_steps": sampler.total_steps,
            "total_tokens": sampler.timeline.total_tokens, "languages": len(sampler.languages),
            "epoch_warning": EPOCH_WARNING, "top_group": TOP_GROUP, "started": svc.started,
            "phases": svc.default.refresh().plans_json, "variant_phases": current_variant_plans(),
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
    app.add_middleware(BodyLimit)  # before any route or token check reads a body
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)
    return app


async def _poll_journal(svc: Service) -> None:
    """Apply journal changes made elsewhere (other replicas, `curriculum amend`) ahead of need."""
    while True:
        await asyncio.sleep(svc.settings.journal_poll)
        try:
            await anyio.to_thread.run_sync(svc.live.sync)
        except (JournalBroken, JournalUnavailable):
            pass  # logged; requests past the watermark get 503 until the journal is fixed or back
        except Exception:  # noqa: BLE001 - the poller must outlive any one failure
            log.exception("journal poll failed")


def _variant_plans(svc: Service) -> list[dict]:
    """Plans of the phase variants the default build does not serve (the dashboard shows them too)."""
    if not svc.variants:
        return []
    served = {(p.phase.name, p.phase.variant) for p in svc.sampler.plans}
    return [phase_plan_json(p, int(p.phase.tokens)) for p in plan_all_variants(svc.recipe, svc.sampler.manifest)
            if (p.phase.name, p.phase.variant) not in served]


def create_app_from_env() -> FastAPI:
    """uvicorn factory for `--workers N`: each spawned worker reads SAMPLER_* from the environment."""
    logging.basicConfig(level=os.environ.get("SAMPLER_LOG_LEVEL", "info").upper(), format=LOG_FORMAT)
    return create_app(ServerSettings())  # type: ignore[call-arg]  (fields come from the environment)


__all__ = ["ApiError", "StartupError", "create_app", "create_app_from_env", "open_sampler"]
