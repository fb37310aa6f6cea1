"""A route table of Gateway API HTTPRoutes, emulated: which backend a request path goes to, and an
HTTP proxy that forwards each request there (tests/e2e/test_shards.py puts it in front of the
shards' processes).

Path matching as Gateway API v1 defines it: Exact is the whole path; PathPrefix matches element
by element (`/predict/topic` takes `/predict/topic` and `/predict/topic/x`, not
`/predict/topic-zs`; a trailing '/' in the value is ignored); RegularExpression is matched against
the whole path, as Envoy does. Precedence across all rules of all routes: Exact, then
RegularExpression, then PathPrefix, each longest value first: the spec orders Exact before
PathPrefix by length and leaves RegularExpression's place to the implementation; this is Envoy
Gateway's and Contour's order. Remaining ties go to the route first by name, then the first rule.
Matches on anything but the path (method, headers, query) are refused, not ignored.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}
# Not forwarded: hop-by-hop, and what httpx has already undone (length, encoding).
DROPPED = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "host",
    "content-length",
    "content-encoding",
}


@dataclass(frozen=True)
class Candidate:
    kind: str
    value: str
    backend: str  # the Service named by the rule's one backendRef
    order: tuple[str, int]  # (route name, rule index): the last tie-breaker

    def matches(self, path: str) -> bool:
        if self.kind == "Exact":
            return path == self.value
        if self.kind == "RegularExpression":
            return re.fullmatch(self.value, path) is not None
        prefix = self.value.rstrip("/")
        return prefix == "" or path == prefix or path.startswith(prefix + "/")

    def precedence(self) -> tuple[int, int, tuple[str, int]]:
        return (RANK[self.kind], -len(self.value), self.order)


def candidates(routes: list[dict[str, Any]]) -> list[Candidate]:
    found = []
    for route in routes:
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1", route["apiVersion"]
        for index, rule in enumerate(route["spec"]["rules"]):
            assert set(rule) <= {"matches", "backendRefs"}, f"rule fields {set(rule)} not emulated"
            [ref] = rule["backendRefs"]
            assert ref.get("kind", "Service") == "Service" and "weight" not in ref
            for match in rule.get("matches", [{"path": {"type": "PathPrefix", "value": "/"}}]):
                assert set(match) == {"path"}, f"match {set(match)} is not emulated"
                path = match["path"]
                order = (route["metadata"]["name"], index)
                found.append(Candidate(path["type"], path["value"], ref["name"], order))
    return found


def backend(routes: list[dict[str, Any]], path: str) -> str | None:
    """The Service a request for ``path`` (query string and all) goes to; None: no rule (404)."""
    path = path.split("?", 1)[0]
    hits = [c for c in candidates(routes) if c.matches(path)]
    return min(hits, key=Candidate.precedence).backend if hits else None


@contextlib.contextmanager
def gateway(
    routes: list[dict[str, Any]], services: dict[str, str], seen: Callable[[str, str], None]
) -> Iterator[str]:
    """An HTTP proxy on a free loopback port implementing ``routes``; ``services`` maps each
    Service name to a base URL, and ``seen(path, service)`` is told of every request routed."""
    client = httpx.Client(timeout=60)

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            service = backend(routes, self.path)
            if service is None:
                self.send_error(404, "no HTTPRoute rule matches")
                return
            seen(self.path.split("?", 1)[0], service)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED}
            reply = client.request(
                self.command, services[service] + self.path, content=body, headers=headers
            )
            self.send_response(reply.status_code)
            for key, value in reply.headers.items():
                if key.lower() not in DROPPED:
                    self.send_header(key, value)
            self.send_header("content-length", str(len(reply.content)))
            self.end_headers()
            self.wfile.write(reply.content)

        do_GET = do_POST = do_PUT = do_DELETE = _forward

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        client.close()
