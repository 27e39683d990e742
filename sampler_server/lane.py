"""A fast lane for `GET /v1/batches/{step}`: plain parameters skip FastAPI's parameter solving.

FastAPI's per-request dependency and parameter solving costs the event loop about as much as the
rest of a batch request (measured); the event loop is the one thread every response passes
through. Requests whose parameters are plain go straight to the route's own token check and
endpoint (`create_app` wires them); anything unusual goes to FastAPI, which answers 422s as ever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from trainer_client import wire

BATCH_PREFIX = "/v1/batches/"
BATCH_DEFAULTS = {"rank": "0", "world_size": "1", "labels": "sparse", "compression": "none", "variant": None}
MAX_DIGITS = 18  # integer parameters (here and in the app's routes): every value fits an int64


def _plain_digits(s: str) -> bool:
    return len(s) <= MAX_DIGITS and s.isascii() and s.isdigit()


def plain_batch_args(path: str, query_string: bytes) -> tuple[int, int, int, str, str, str | None] | None:
    """(step, rank, world_size, labels, compression, variant) of a `/v1/batches/{step}` request
    whose parameters are plain: up to 18 decimal digits, the literal choices, known names once each.
    None for anything else, which FastAPI then parses (and answers with a 422 where invalid)."""
    step = path[len(BATCH_PREFIX):]
    if not _plain_digits(step):
        return None
    q = dict(BATCH_DEFAULTS)
    seen = set()
    # As Starlette reads a query string (QueryParams).
    for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if k not in q or k in seen or not v:
            return None
        seen.add(k)
        q[k] = v
    rank, world = q["rank"], q["world_size"]
    if not (_plain_digits(rank) and _plain_digits(world)):
        return None
    if q["labels"] not in wire.LABEL_MODES or q["compression"] not in wire.COMPRESSIONS:
        return None
    return int(step), int(rank), int(world), q["labels"], q["compression"], q["variant"]


class BatchLane:
    """ASGI middleware: serves `GET /v1/batches/{step}` with plain parameters (`plain_batch_args`)
    by calling the route's dependency and endpoint directly. FastAPI's per-request parameter
    solving costs the event loop about as much as the rest of the request (measured); the event
    loop is the one thread every response passes through. Everything else goes to FastAPI."""

    def __init__(self, app: ASGIApp, route: object, handle: Callable[..., Awaitable[Response]]):
        self.app, self.route, self.handle = app, route, handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(BATCH_PREFIX):
            args = plain_batch_args(scope["path"], scope["query_string"])
            if args is not None:
                scope["route"] = self.route  # what FastAPI would set: the metrics' route label
                response = await self.handle(Request(scope, receive), *args)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
