"""Pure ASGI middlewares around everything else: a request id, and a count and an access line
of every answer.

create_app adds them last, so they run first: the answers service/limits.py gives before the app
sees a request (429 beyond the in-flight bound, 413 for a declared body over the limit) carry a
request id and are counted and logged like the app's own 404s, 422s and 5xxs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence

from fastapi.routing import RouteContext, iter_route_contexts
from prometheus_client import Counter
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multitask_serve.service.logs import request_id, request_tasks

access_log = logging.getLogger("multitask_serve.access")

HEADER = b"x-request-id"
# A client's id is kept when it is 1-128 visible ASCII characters (no spaces or controls, so it
# cannot forge log lines or headers); anything else is replaced by a new id, not refused.
VALID_ID = re.compile(rb"[\x21-\x7e]{1,128}")
# The ``route`` label of requests no route matched: one value, never the raw path, so that a
# scan of random paths cannot grow the series without bound. Methods outside this set likewise.
UNMATCHED = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def new_request_id(given: bytes | None) -> str:
    """The client's ``X-Request-ID`` if valid, else a new uuid4 hex."""
    if given is not None and VALID_ID.fullmatch(given):
        return given.decode("ascii")
    return uuid.uuid4().hex


class RequestId:
    """Sets ``logs.request_id`` for the request and echoes it in ``X-Request-ID`` on the answer.

    The context variable is not reset after the request: uvicorn runs each request in a task of
    its own, whose context ends with it, and uvicorn's own lines for the request (an unhandled
    exception's traceback) are written after the app returns.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        rid = new_request_id(given)
        request_id.set(rid)
        echoed = (HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != HEADER]
                message = {**message, "headers": [*headers, echoed]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestCounter:
    """``mts_http_requests_total{route, method, status}`` for every HTTP request answered, and
    its access line: ``POST /predict/{task} 200 3.1 ms tasks=sentiment`` (``tasks=-`` when it
    named none), logged at INFO by ``multitask_serve.access`` once the answer is sent, with
    method, route, status, duration_ms and tasks as fields of a JSON line (service/logs.py).

    ``route`` is the matching route's template (``/predict/{task}``), ``other`` when none matches.
    A request whose app raised before answering counts as the 500 uvicorn then sends; one
    cancelled before an answer (the server stopping) is neither counted nor logged.
    """

    def __init__(self, app: ASGIApp, counter: Counter, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.counter = counter
        self._routes = routes
        # Every route with its full template (FastAPI keeps included routers unflattened), made
        # at the first request: create_app adds every route before the app serves.
        self._flat: list[RouteContext] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None
        started = time.perf_counter()
        tasks: list[str] = []
        noting = request_tasks.set(tasks)

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception:
            self._answered(scope, status or 500, started, tasks)
            raise
        finally:
            request_tasks.reset(noting)
        self._answered(scope, status or 500, started, tasks)  # no answer: uvicorn sends a 500

    def _answered(self, scope: Scope, status: int, started: float, tasks: list[str]) -> None:
        method = scope["method"] if scope["method"] in METHODS else UNMATCHED
        route = self.template(scope)
        self.counter.labels(route, method, str(status)).inc()
        if access_log.isEnabledFor(logging.INFO):
            ms = round((time.perf_counter() - started) * 1000, 3)
            fields = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": ms,
                "tasks": tasks,
            }
            access_log.info(
                "%s %s %d %.1f ms tasks=%s",
                method,
                route,
                status,
                ms,
                ",".join(tasks) or "-",
                extra={"fields": fields},
            )

    def template(self, scope: Scope) -> str:
        """The template of the route the app's router picked: it leaves the route in the scope,
        so the search over every route (tens of microseconds for routes late in the table) is
        only made for a request answered before routing (the limits) or by no route."""
        path = getattr(scope.get("route"), "path", None)
        return path if isinstance(path, str) else self.route(scope)

    def route(self, scope: Scope) -> str:
        """The template of the route that takes the request (or would, but for its method)."""
        if self._flat is None:
            self._flat = [r for r in iter_route_contexts(self._routes) if r.path]
        partial = None
        for route in self._flat:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(route.path)
            if match is Match.PARTIAL and partial is None:
                partial = str(route.path)
        return partial or UNMATCHED
