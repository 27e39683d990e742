"""HTTP client of the sampler service: timeouts, retries with backoff and jitter, failover, build-id check.

Every request has a timeout (connect, read, write, pool). A request that fails for a reason
another replica or a later try may not share — connection refused or reset, timeout, a truncated
body, HTTP 408/429/5xx, bytes that do not decode — is retried on the next URL of the list; when
every URL has failed once, the client sleeps (exponential backoff with jitter) and starts another
round, up to `RetryPolicy.attempts` rounds. A URL that failed is tried last for a cool-down period,
so a dead replica does not cost a timeout per request. A 4xx other than 408/429 with a sampler-server's JSON
error body is the caller's mistake (a step past the end, a world size that does not divide the
batch): it is raised at once with the server's message, never retried. Any other error answer (a
proxy's page, another service on that port) counts as a failed replica, in one line.

Build id: `build_id` identifies manifest + recipe + seed (the server's run id). The client
remembers the first one it sees (or the one a checkpoint was trained on) and raises
`BuildIdMismatch` as soon as any server answers with another, instead of silently training on
other data. Amendments of the live curriculum do not change it: a batch's own build id (its
metadata `build_id`) then also covers the amendments in force at its step, and its `run_id` is
what the client checks. A replica still applying an amendment answers 503, which is retried.

Journal check: two replicas of one run must also share one amendment journal, or they serve
different batches under the same run id. So the client remembers the build id of every recent
step's batch (and a checkpoint's last one), and the first time a replica serves it a batch after
another source did, asks that replica (`GET /v1/schedule?step=t`) for the build id of t, the
latest such earlier step: it must equal the one trained on, or `JournalMismatch` stops the run.
The answer is final once the replica has served a later step: an amendment can only reach steps
past every step already served (`curriculum.journal`), so the replica has applied every entry in
force at t.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from trainer_client import wire

log = logging.getLogger("trainer_client")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class SamplerError(RuntimeError):
    """Base class of the client's errors; the message says what to do."""


class SamplerUnavailable(SamplerError):
    """No server answered a request after every retry."""


class SamplerRequestError(SamplerError):
    """A server refused the request (4xx): retrying elsewhere would not help."""

    def __init__(self, url: str, status: int, code: str, message: str):
        super().__init__(f"{url}: HTTP {status} {code}: {message}")
        self.url, self.status, self.code, self.message = url, status, code, message


class BuildIdMismatch(SamplerError):
    """A server serves another build (manifest, recipe or seed) than the one this run uses."""

    def __init__(self, url: str, expected: str, got: str, origin: str):
        super().__init__(
            f"server {url} serves build {got}, but this run uses build {expected} ({origin}); "
            "its batches would come from another manifest, recipe or seed, or a sampler-server whose masking or blending rule "
            "differs (sampler_server MASK_RULE_VERSION, BLEND_RULE_VERSION). Point --server at replicas started with the run's "
            "manifest, recipe and seed on the run's sampler version, or start a new run (a fresh --checkpoint-dir)"
        )
        self.url, self.expected, self.got = url, expected, got


class JournalMismatch(SamplerError):
    """A replica serves an already trained step as another build: it does not share the run's
    amendment journal (or its journal lost entries)."""

    def __init__(self, url: str, step: int, expected: str, got: str, origin: str):
        super().__init__(
            f"server {url} serves step {step} as build {got}, but this run trained it as build {expected} "
            f"({origin}): the replicas do not share one amendment journal, so they serve different batches "
            "for the same steps. Start every replica with the same --journal (or resume where the run's "
            "journal is), then rerun"
        )
        self.url, self.step, self.expected, self.got = url, step, expected, got


_STEP_MEMORY = 256  # recent steps whose build ids the journal check remembers


@dataclass(frozen=True)
class RetryPolicy:
    """Rounds over all URLs, and the backoff between rounds: min(max_delay, base_delay·2^k)
    scaled by a uniform factor in [1 - jitter, 1] (jitter keeps many ranks from retrying in step)."""

    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 10.0
    jitter: float = 0.5
    cooldown: float = 30.0  # seconds a failed URL is tried last

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.max_delay, self.base_delay * (2.0 ** attempt))
        return d * (1.0 - self.jitter * rng.random())


DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=30.0, pool=30.0)


@dataclass(frozen=True)
class ServerInfo:
    """What `GET /v1/recipe` says about the served run."""

    build_id: str
    total_steps: int
    languages: int
    phases: list[dict[str, Any]]
    tokenizer: dict[str, Any] | None  # vocab_size and special ids, when the server reports them
    raw: dict[str, Any] = field(repr=False)


@dataclass
class ClientStats:
    requests: int = 0
    failures: int = 0  # attempts that failed and were retried elsewhere or later
    failovers: int = 0  # times the active URL changed
    bytes: int = 0


def normalize_urls(urls: str | Sequence[str]) -> list[str]:
    """A comma-separated string or a list of base URLs → validated list without trailing slashes."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = []
    for u in (x.strip() for x in items):
        if not u:
            continue
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"server URL {u!r} must look like http://HOST:PORT")
        out.append(u.rstrip("/"))
    if not out:
        raise ValueError("give at least one server URL (--server http://HOST:PORT[,http://HOST2:PORT])")
    return out


def _sampler_error(r: httpx.Response) -> tuple[str, str] | None:
    """(code, message) of a sampler-server's JSON error body; None for anything else."""
    try:
        body = r.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or "error" not in body:
        return None
    return str(body["error"]), str(body.get("message", body))


def _error_message(r: httpx.Response) -> tuple[str, str]:
    """(code, message) of an error response, on one line whatever the body (an HTML page too)."""
    known = _sampler_error(r)
    if known is not None:
        return known
    kind = r.headers.get("content-type", "no content type").split(";")[0]
    text = " ".join(r.text.split())[:120]
    return "error", f"not a sampler-server's answer ({kind}: {text!r}): is a sampler-server running there?"


def json_object(url: str, r: httpx.Response, *need: str) -> dict[str, Any]:
    """The response's JSON object, with the keys `need`; ValueError naming the URL otherwise (a
    proxy's page or another service on that port, not a sampler-server)."""
    body = r.json()  # ValueError when not JSON
    if not isinstance(body, dict):
        raise ValueError(f"{url}{r.request.url.path} answered JSON {type(body).__name__}, not an object: is a "
                         "sampler-server running there?")
    missing = [k for k in need if k not in body]
    if missing:
        raise ValueError(f"{url}{r.request.url.path} answered an object without {', '.join(missing)}: is a "
                         "sampler-server running there?")
    return body


class SamplerClient:
    """Thread-safe client of one or more replicas of the same sampler build."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        build_id: str | None = None,
        build_origin: str = "expected by the caller",
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        seed: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.urls = normalize_urls(urls)
        self.retry = retry
        self.build_id = build_id
        self._build_origin = build_origin if build_id else ""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._active = 0
        self._down_until = [0.0] * len(self.urls)
        self._steps: dict[int, tuple[str, str]] = {}  # step -> (its batch's build id, where it came from)
        self._checked: set[tuple[str, int]] = set()  # (url, step) pairs the journal check passed
        self.stats = ClientStats()
        headers = {"User-Agent": "trainer-client"}
        token = token.strip() if token else token  # a secret file's trailing newline made every request fail
        if token:
            if any(c.isspace() for c in token) or not token.isprintable():
                raise ValueError("the server token (--token / SAMPLER_TOKEN) holds whitespace or control characters; "
                                 "an HTTP header cannot carry it")
            headers["Authorization"] = f"Bearer {token}"
        # A number is the read timeout (`--timeout`): connecting to a live server takes milliseconds,
        # and a dead or black-holed replica must not cost a whole read timeout before failover.
        t = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(
            connect=min(DEFAULT_TIMEOUT.connect, float(timeout)), read=float(timeout),
            write=max(DEFAULT_TIMEOUT.write, float(timeout)), pool=max(DEFAULT_TIMEOUT.pool, float(timeout)))
        self._http = httpx.Client(timeout=t, headers=headers, transport=transport,
                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SamplerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def active_url(self) -> str:
        return self.urls[self._active]

    # -- core -------------------------------------------------------------------------------

    def _order(self) -> list[int]:
        """URL indices to try: the active one, then the others; cooling-down ones last."""
        with self._lock:
            n, a, now = len(self.urls), self._active, time.monotonic()
            ring = [(a + i) % n for i in range(n)]
            return [i for i in ring if self._down_until[i] <= now] + [i for i in ring if self._down_until[i] > now]

    def _failed(self, i: int, why: str) -> None:
        with self._lock:
            self.stats.failures += 1
            self._down_until[i] = time.monotonic() + self.retry.cooldown
        log.warning("sampler %s failed: %s", self.urls[i], why)

    def _succeeded(self, i: int) -> None:
        with self._lock:
            self._down_until[i] = 0.0
            if i != self._active:
                log.warning("sampler: failing over from %s to %s", self.urls[self._active], self.urls[i])
                self.stats.failovers += 1
                self._active = i

    def check_build(self, url: str, got: str | None) -> None:
        """Adopt the first build id seen; raise BuildIdMismatch on any other."""
        if not got:
            return
        with self._lock:
            if self.build_id is None:
                self.build_id, self._build_origin = got, f"first seen at {url}"
                return
            expected, origin = self.build_id, self._build_origin
        if got != expected:
            raise BuildIdMismatch(url, expected, got, origin)

    def expect_build(self, build_id: str, origin: str) -> None:
        """Pin the build id (e.g. the one a checkpoint was trained on)."""
        with self._lock:
            if self.build_id is not None and self.build_id != build_id:
                raise BuildIdMismatch(self.urls[self._active], build_id, self.build_id, origin)
            self.build_id, self._build_origin = build_id, origin

    def remember_step(self, step: int, build_id: str, source: str) -> None:
        """Record the build id step `step` was trained as (`source`: a URL, or e.g. a checkpoint)."""
        with self._lock:
            self._steps[int(step)] = (str(build_id), source)
            while len(self._steps) > _STEP_MEMORY:
                del self._steps[min(self._steps)]

    def _check_journal(self, url: str, step: int, variant: str | None) -> None:
        """The journal check (module docstring) for `url`, which has just served `step`. Raises
        JournalMismatch, or ValueError when the replica cannot answer (it then counts as failed)."""
        with self._lock:
            earlier = [t for t, (_, src) in self._steps.items() if t <= step and src != url]
            if not earlier:
                return
            t = max(earlier)
            expected, source = self._steps[t]
            if (url, t) in self._checked:
                return
        params: dict[str, Any] = {"step": t}
        if variant is not None:
            params["variant"] = variant
        try:
            r = self._http.get(url + "/v1/schedule", params=params)
        except httpx.TransportError as exc:
            raise ValueError(f"checking step {t}'s build id: {type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            code, msg = _error_message(r)
            raise ValueError(f"checking step {t}'s build id: HTTP {r.status_code} {code}: {msg}")
        got = json_object(url, r, "build_id")["build_id"]
        if got != expected:
            raise JournalMismatch(url, t, expected, str(got), f"served by {source}")
        with self._lock:
            self._checked.add((url, t))

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, attempts: int | None = None, decode=None) -> tuple[str, Any]:
        """(url, result) of the first replica that answers: `decode(url, response)` when given,
        else the response. `decode` raising ValueError counts as a failure of that replica."""
        errors: dict[str, str] = {}
        rounds = self.retry.attempts if attempts is None else attempts
        for attempt in range(rounds):
            for i in self._order():
                url = self.urls[i]
                try:
                    r = self._http.request(method, url + path, params=params, json=json)
                except httpx.TransportError as exc:  # connect/read/write errors, timeouts, truncated bodies
                    errors[url] = f"{type(exc).__name__}: {exc}"
                    self._failed(i, errors[url])
                    continue
                with self._lock:
                    self.stats.requests += 1
                    self.stats.bytes += len(r.content)
                if r.status_code in RETRYABLE_STATUS:
                    code, msg = _error_message(r)
                    errors[url] = f"HTTP {r.status_code} {code}: {msg}"
                    self._failed(i, errors[url])
                    continue
                if r.status_code >= 400:
                    known = _sampler_error(r)
                    if known is None:  # a proxy's page or another service on that port: try the others
                        code, msg = _error_message(r)
                        errors[url] = f"HTTP {r.status_code} {code}: {msg}"
                        self._failed(i, errors[url])
                        continue
                    code, msg = known
                    if r.status_code in (401, 403):
                        msg += " (trainer-client: --token or SAMPLER_TOKEN)"
                    raise SamplerRequestError(url, r.status_code, code, msg)
                self.check_build(url, r.headers.get("x-run-id") or r.headers.get("x-build-id"))
                if decode is not None:
                    try:
                        out = decode(url, r)
                    except ValueError as exc:  # WireError and bad JSON are ValueErrors
                        errors[url] = f"bad response: {exc}"
                        self._failed(i, errors[url])
                        continue
                else:
                    out = r
                self._succeeded(i)
                return url, out
            if attempt + 1 < rounds:
                time.sleep(self.retry.delay(attempt, self._rng))
        detail = "; ".join(f"{u}: {e}" for u, e in errors.items())
        raise SamplerUnavailable(
            f"{method} {path}: no sampler server answered after {rounds} round(s) over {len(self.urls)} URL(s) "
            f"({detail}); check that `sampler-server serve` runs there, or add replicas to --server"
        )

    # -- endpoints --------------------------------------------------------------------------

    def info(self, variant: str | None = None) -> ServerInfo:
        """Build id, steps and phases of the served run (of `variant`: a variant is its own build).
        `GET /v1/recipe` for the default; `GET /v1/schedule?variant=` for a variant."""
        def parse(url: str, r: httpx.Response) -> ServerInfo:
            body = json_object(url, r, "build_id", "total_steps")
            if not isinstance(body.get("phases", []), list):
                raise ValueError(f"{url}{r.request.url.path}: 'phases' is not a list: is a sampler-server running there?")
            self.check_build(url, body.get("build_id"))
            if variant is not None and not any(p.get("variant") == variant for p in body.get("phases", [])):
                raise SamplerRequestError(url, 400, "variant_unsupported",
                                          f"asked for variant {variant!r}, the schedule has none: this server does "
                                          "not serve phase variants")
            tok = body.get("tokenizer")
            return ServerInfo(build_id=body["build_id"], total_steps=int(body["total_steps"]),
                              languages=int(body.get("languages", 0)), phases=list(body.get("phases", [])),
                              tokenizer=tok if isinstance(tok, dict) else None, raw=body)
        if variant is None:
            return self.request("GET", "/v1/recipe", decode=parse)[1]
        return self.request("GET", "/v1/schedule", params={"variant": variant}, decode=parse)[1]

    def check_replicas(self, variant: str | None = None) -> dict[str, str]:
        """Ask every URL once for its build id (`/healthz`, or `/v1/schedule?variant=`): url → build
        id or the error. Raises BuildIdMismatch when a reachable replica serves another build (an
        unreachable one may come back later and is checked on every response then)."""
        out = {}
        path, params = ("/healthz", None) if variant is None else ("/v1/schedule", {"variant": variant})
        for url in self.urls:
            try:
                r = self._http.get(url + path, params=params)
                bid = json_object(url, r).get("build_id") if r.status_code == 200 else None
            except (httpx.TransportError, ValueError) as exc:
                out[url] = f"unreachable ({type(exc).__name__})"
                self._failed(self.urls.index(url), f"unreachable at start-up ({type(exc).__name__}); it is tried last "
                             "for a while and again on failover")
                continue
            if bid is None:
                out[url] = f"HTTP {r.status_code}" + (" without a build id: not a sampler-server?" if r.status_code == 200 else "")
                continue
            self.check_build(url, bid)
            out[url] = bid
        return out

    def get_batch(self, step: int, rank: int = 0, world_size: int = 1, *, variant: str | None = None,
                  labels: wire.LabelMode = "sparse", compression: str | None = None) -> wire.WireBatch:
        """`GET /v1/batches/{step}` decoded (zero-copy for input_ids); checks step, rank and build id."""
        params: dict[str, Any] = {"rank": rank, "world_size": world_size}
        if labels != "sparse":
            params["labels"] = labels
        if compression:
            params["compression"] = compression
        if variant is not None:
            params["variant"] = variant

        def parse(url: str, r: httpx.Response) -> wire.WireBatch:
            b = wire.decode(r.content)
            md = b.metadata
            self.check_build(url, str(md.get("run_id") or md.get("build_id")))
            if md.get("step") != step or md.get("rank") != rank or md.get("world_size") != world_size:
                raise wire.WireError(f"asked for step {step} rank {rank}/{world_size}, got step {md.get('step')} "
                                     f"rank {md.get('rank')}/{md.get('world_size')}")
            if "variant" in md and md["variant"] != (variant or ""):
                raise wire.WireError(f"asked for variant {variant!r}, the batch is of variant {md['variant']!r}")
            self._check_journal(url, step, variant)
            return b

        url, batch = self.request("GET", f"/v1/batches/{step}", params=params, decode=parse)
        if batch.metadata.get("build_id"):
            self.remember_step(step, str(batch.metadata["build_id"]), url)
        return batch

    def schedule(self, step: int) -> dict[str, Any]:
        """`GET /v1/schedule?step=`: the step's phase, sequence length, LR factor, ..."""
        return self.request("GET", "/v1/schedule", params={"step": step}, decode=lambda url, r: json_object(url, r))[1]

    def post_progress(self, report: Mapping[str, Any]) -> bool:
        """`POST /v1/progress` (one round over the URLs, no backoff: progress is telemetry and must
        not stall training); False, with a warning, when no server took it."""
        try:
            self.request("POST", "/v1/progress", json=dict(report), attempts=1)
            return True
        except SamplerRequestError as exc:
            log.warning("progress report refused: %s", exc)
        except SamplerUnavailable as exc:
            log.warning("progress report not delivered: %s", exc)
        return False
