"""Pure ASGI middlewares that refuse work before anything is parsed or buffered: bodies over a size
limit, and prediction requests beyond a number in flight."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body


class BodyLimit:
    """413 for bodies over ``default`` bytes (``upload`` under ``/admin/``)."""

    def __init__(self, app: ASGIApp, default: int, upload: int) -> None:
        self.app = app
        self.default = default
        self.upload = upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload if scope["path"].startswith("/admin/") else self.default
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            message = f"request body exceeds {limit} bytes"
            await _respond(send, 413, "too_large", message, [(b"connection", b"close")])
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the app's body read. FastAPI turns most errors there into a
                    # 400 but passes HTTPException through, so the handler answers 413.
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited, send)


class InFlightLimit:
    """429 with Retry-After for prediction requests beyond ``limit`` in flight (0: no limit).

    Under overload an accepted request's latency is about the number of requests ahead of it
    divided by the throughput, so bounding requests in flight bounds it. Counting from the first
    byte to the answer covers every stage (body, validation, queue, inference, response), and the
    excess is refused before its body is read or validated.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0  # touched only on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or not scope["path"].startswith("/predict"):
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            message = f"{self.active} prediction requests in flight (limit {self.limit}); retry"
            await _respond(send, 429, "overloaded", message, [(b"retry-after", b"1")])
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _respond(
    send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
