"""A bound on request bodies, checked before any route (or token check) reads them.

Every body the API takes is small: a progress report (at most 4,096 per-language losses) or an
amendment (multipliers for every language of a manifest) is well under 1 MiB. Without a bound,
any client, with a token or not, could make a replica buffer a body of any size before FastAPI
parses it and answers 401 or 422. A declared Content-Length over the bound is refused at once;
a chunked body is read here, counted as it arrives, refused when it passes the bound, and
otherwise handed on whole.
"""

from __future__ import annotations

import json

MAX_BODY_BYTES = 1 << 20


class BodyLimit:
    """ASGI middleware: 413 `body_too_large` (JSON, like every API error) past `max_bytes`."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1  # the HTTP server refuses a malformed length before we see it
                if declared > self.max_bytes:
                    await self._refuse(send, f"{declared:,} bytes declared")
                    return
        if scope.get("method") in ("GET", "HEAD"):  # no body: the batch routes pass untouched
            await self.app(scope, receive, send)
            return
        # Read the (small) body here, bounded, then replay it: a limit raised from inside the
        # app's own body reading would reach FastAPI, which turns any error there into a 400.
        messages = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._refuse(send, f"more than {self.max_bytes:,} bytes sent")
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, what: str) -> None:
        body = json.dumps({"error": "body_too_large", "message": f"request body too large ({what}); the limit is "
                           f"{self.max_bytes:,} bytes: send one progress report or amendment per request"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
