"""Pure ASGI middlewares that refuse work before anything is parsed or buffered: bodies over a size
limit, and inference requests beyond a number in flight."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multitask_serve.service.errors import Overloaded, ServiceError, TooLarge
from multitask_serve.service.http_errors import WireFormat, as_http_exception


@dataclass(frozen=True)
class InferenceRoute:
    """Requests that run inference: this ``method`` on a path that ``path`` matches in full.

    ``errors`` is the wire format the route's own errors take, so a request the in-flight bound
    refuses reads like any other error of that route.
    """

    method: str
    path: re.Pattern[str]
    errors: WireFormat


class InferenceRoutes:
    """Every route that runs inference, and only those, from the wire formats' own lists
    (``WireFormat.inference``): they share one in-flight bound. Health, readiness, metrics,
    admin and metadata routes are absent, so they are never counted or refused. A new inference
    route is one more entry in its format's list: tests/integration/test_inflight_limit.py checks
    that of the app's operations exactly its list of inference operations is counted.

    Called with (method, path), it says whether the request runs inference.
    """

    def __init__(self, formats: Sequence[WireFormat]) -> None:
        self.routes = tuple(
            InferenceRoute("POST", re.compile(path), wire)
            for wire in formats
            for path in wire.inference
        )

    def match(self, method: str, path: str) -> InferenceRoute | None:
        """The route a request matches, or None if it runs no inference."""
        for route in self.routes:
            if method == route.method and route.path.fullmatch(path):
                return route
        return None

    def __call__(self, method: str, path: str) -> bool:
        return self.match(method, path) is not None


class BodyLimit:
    """413 for bodies over ``default`` bytes (``upload`` under ``/admin/``), in the form of the
    route's wire format (``own`` for routes that run no inference)."""

    def __init__(
        self,
        app: ASGIApp,
        default: int,
        upload: int,
        inference: InferenceRoutes,
        own: WireFormat,
    ) -> None:
        self.app = app
        self.default = default
        self.upload = upload
        self.inference, self.own = inference, own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload if scope["path"].startswith("/admin/") else self.default
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            route = self.inference.match(scope["method"], scope["path"])
            error = TooLarge(f"request body exceeds {limit} bytes")
            await _refuse(send, route.errors if route else self.own, error, close=True)
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
                    raise as_http_exception(TooLarge(f"request body exceeds {limit} bytes"))
            return message

        await self.app(scope, limited, send)


class InFlightLimit:
    """429 with Retry-After for inference requests beyond ``limit`` in flight (0: no limit).

    One count covers every route of ``inference`` together: they share the same batcher
    and cores. Under overload an accepted request's latency is about the number of requests
    ahead of it divided by the throughput, so bounding requests in flight bounds it. Counting from
    the first byte to the answer covers every stage (body, validation, queue, inference,
    response), and the excess is refused, in the route's own error form, before its body is read
    or validated.
    """

    def __init__(self, app: ASGIApp, limit: int, inference: InferenceRoutes) -> None:
        self.app = app
        self.limit = limit
        self.inference = inference
        self.active = 0  # touched only on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and self.limit > 0:
            route = self.inference.match(scope["method"], scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            message = f"{self.active} inference requests in flight (limit {self.limit}); retry"
            await _refuse(send, route.errors, Overloaded(message))  # 429 with Retry-After
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _refuse(send: Send, errors: WireFormat, error: ServiceError, close: bool = False) -> None:
    """Answer ``error`` in the route's wire format before the app sees the request."""
    status, body, headers = errors.of(error)
    extra = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]
    if close:
        extra.append((b"connection", b"close"))
    await _respond(send, status, body, extra)


async def _respond(send: Send, status: int, error: Any, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(error).encode()
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
