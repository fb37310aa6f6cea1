"""Which routes each listener serves when ``MTS_ADMIN_PORT`` opens a second one.

One uvicorn server listens on both ports (service/server.py), so one lifespan, one drain and one
graceful shutdown cover both; a request's listener is the local port it arrived on
(``scope["server"]``: the socket's own address, which a container's or a pod's port mapping does
not change). The admin listener serves ``/admin/...`` and ``/metrics``; the inference listener
everything else; ``/healthz`` and ``/readyz`` answer on both (the manifests probe the inference
port, the one the Service sends traffic to). A path served on the other listener answers exactly
as a path no route serves (404 ``not_found``), so the inference port does not even reveal that
the admin API exists.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from multitask_serve.service.http_errors import WireFormat

ADMIN_PREFIX = "/admin/"
ADMIN_PATHS = frozenset({"/admin", "/metrics"})
BOTH = frozenset({"/healthz", "/readyz"})


def admin_only(path: str) -> bool:
    """Whether ``path`` (as the router matches it: percent-decoded) is served on the admin port
    only."""
    return path in ADMIN_PATHS or path.startswith(ADMIN_PREFIX)


class ListenerSplit:
    """404 for admin paths on the inference port, and for inference paths on ``admin_port``."""

    def __init__(self, app: ASGIApp, admin_port: int, own: WireFormat) -> None:
        self.app = app
        self.admin_port = admin_port
        self.own = own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            server = scope.get("server")
            on_admin = server is not None and server[1] == self.admin_port
            if path not in BOTH and admin_only(path) != on_admin:
                # The body and headers of the router's own 404 for an unknown path.
                response = self.own.response(HTTPException(404, "Not Found"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
