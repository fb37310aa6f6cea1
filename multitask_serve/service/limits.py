"""Pure ASGI middlewares that refuse work before anything is parsed or buffered: bodies over a size
limit, and inference requests beyond a number in flight."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multitask_serve.service.errors import Overloaded, ServiceError, TooLarge
from multitask_serve.service.http_errors import (
    OIP,
    OPENAI,
    SERVICE,
    TEI,
    WireFormat,
    as_http_exception,
)


@dataclass(frozen=True)
class InferenceRoute:
    """Requests that run inference: this ``method`` on a path that ``path`` matches in full.

    ``errors`` is the wire format the route's own errors take, so a request the in-flight bound
    refuses reads like any other error of that route.
    """

    method: str
    path: re.Pattern[str]
    errors: WireFormat


# Every route that runs inference, and only those: they share one in-flight bound. Health,
# readiness, metrics, admin and metadata routes are absent, so they are never counted or refused.
# A new inference route is one more entry here: tests/integration/test_inflight_limit.py checks
# that of the app's operations exactly its list of inference operations is counted.
INFERENCE_ROUTES: tuple[InferenceRoute, ...] = (
    # The service's own routes: POST /predict and /predict/{task}.
    InferenceRoute("POST", re.compile(r"/predict(?:/[^/]+)?"), SERVICE),
    # Open Inference Protocol (service/oip.py): POST /v2/models/{task}[/versions/{v}]/infer.
    InferenceRoute("POST", re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer"), OIP),
    # Text Embeddings Inference (service/tei.py): POST /tei/{task}[/embed|/predict].
    InferenceRoute("POST", re.compile(r"/tei/[^/]+(?:/embed|/predict)?"), TEI),
    # OpenAI (service/openai_compat.py): POST /v1/embeddings.
    InferenceRoute("POST", re.compile(r"/v1/embeddings"), OPENAI),
)


def inference_route(method: str, path: str) -> InferenceRoute | None:
    """The entry of ``INFERENCE_ROUTES`` a request matches, or None if it runs no inference."""
    for route in INFERENCE_ROUTES:
        if method == route.method and route.path.fullmatch(path):
            return route
    return None


def is_inference(method: str, path: str) -> bool:
    return inference_route(method, path) is not None


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
            route = inference_route(scope["method"], scope["path"])
            error = TooLarge(f"request body exceeds {limit} bytes")
            await _refuse(send, route.errors if route else SERVICE, error, close=True)
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

    One count covers every route in ``INFERENCE_ROUTES`` together: they share the same batcher
    and cores. Under overload an accepted request's latency is about the number of requests
    ahead of it divided by the throughput, so bounding requests in flight bounds it. Counting from
    the first byte to the answer covers every stage (body, validation, queue, inference,
    response), and the excess is refused, in the route's own error form, before its body is read
    or validated.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0  # touched only on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and self.limit > 0:
            route = inference_route(scope["method"], scope["path"])
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
