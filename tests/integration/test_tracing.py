"""Traced requests as an OpenTelemetry collector receives them: the SDK's in-memory exporter for
the span tree (the caller's trace kept, request -> queue wait, batch -> tokenize, trunk, heads;
response), and a real OTLP/HTTP receiver on loopback for the exporter the settings build.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from multitask_serve.service.tracing import TraceRequests, Tracing
from tests.conftest import make_settings

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
# A one-task request's spans, by name.
REQUEST_SPANS = [
    "POST /predict/{task}",
    "mts.queue",
    "mts.batch",
    "mts.tokenize",
    "mts.trunk",
    "mts.head",
    "mts.response",
]


def traceparent(trace_id: str, span_id: str = CALLER_SPAN, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree (parents before children), with ids, links and attributes."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent else None
        by_parent.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            links = [f"{link.context.span_id:016x}" for link in span.links]
            lines.append(
                f"{'  ' * depth}{span.name} [{span.context.trace_id:032x}/"
                f"{span.context.span_id:016x} parent "
                f"{span.parent.span_id if span.parent else 0:016x}] {ms:.2f} ms"
                + (f" links={links}" if links else "")
                + f" {dict(span.attributes or {})}"
            )
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


@pytest.fixture
def traced(repo: Path) -> Iterator[tuple[Callable[..., TestClient], InMemorySpanExporter]]:
    """A factory of apps (settings overrides as keywords) whose spans the exporter keeps."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def app(**overrides: Any) -> TestClient:
        settings = make_settings(repo, **overrides)
        return TestClient(create_app(settings, CollectorRegistry(), tracing=Tracing(provider)))

    yield app, exporter
    provider.shutdown()


def finished(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The exporter's spans once ``count`` have ended (the server span ends after the answer is
    sent, the batch's after the worker handed the answers back: both may trail the client)."""
    deadline = time.monotonic() + 10
    while len(spans := list(exporter.get_finished_spans())) < count:
        assert time.monotonic() < deadline, tree(spans)
        time.sleep(0.01)
    return spans


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def test_a_traced_request_is_its_callers_child_with_queue_batch_trunk_heads_and_response(
    traced,
):
    app, exporter = traced
    headers = {
        "traceparent": traceparent(CALLER_TRACE),
        "tracestate": "vendor=opaque",
        "x-request-id": "trace-test-1",
    }
    body = {"inputs": ["a first text", "a second one"], "tasks": ["embed", "topic-zs"]}
    with app(batch_inline_max_tokens=0) as client:  # through the queue, not inline
        assert client.post("/predict", json=body, headers=headers).status_code == 200
        spans = finished(exporter, 8)
    print(tree(spans))
    assert sorted(s.name for s in spans) == sorted(
        [*REQUEST_SPANS[1:], "POST /predict", "mts.head"]
    )
    assert {s.context.trace_id for s in spans} == {int(CALLER_TRACE, 16)}
    request = one(spans, "POST /predict")
    assert request.kind is SpanKind.SERVER
    assert request.parent is not None and request.parent.span_id == int(CALLER_SPAN, 16)
    assert request.parent.is_remote
    assert request.context.trace_state.get("vendor") == "opaque"
    attributes = dict(request.attributes or {})
    assert attributes["http.route"] == "/predict"
    assert attributes["http.response.status_code"] == 200
    assert attributes["mts.request_id"] == "trace-test-1"
    assert attributes["mts.tasks"] == ("embed", "topic-zs")
    assert attributes["mts.texts"] == 2
    queue, batch = one(spans, "mts.queue"), one(spans, "mts.batch")
    response = one(spans, "mts.response")
    for child in (queue, batch, response):
        assert child.parent is not None and child.parent.span_id == request.context.span_id
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]
    assert [link.context.span_id for link in queue.links] == [batch.context.span_id]
    assert queue.end_time == batch.start_time  # taken by the batch as it began
    assert dict(batch.attributes or {})["mts.batch.inline"] is False
    heads = [s for s in spans if s.name == "mts.head"]
    for child in (one(spans, "mts.tokenize"), one(spans, "mts.trunk"), *heads):
        assert child.parent is not None and child.parent.span_id == batch.context.span_id
        assert batch.start_time <= child.start_time <= child.end_time <= batch.end_time  # type: ignore[operator]
    assert {dict(h.attributes or {})["mts.task"] for h in heads} == {"embed", "topic-zs"}
    assert all(dict(h.attributes or {})["mts.rows"] == 2 for h in heads)
    assert dict(one(spans, "mts.trunk").attributes or {})["mts.rows"] == 2
    assert dict(response.attributes or {})["mts.response.bytes"] > 0


def test_requests_that_share_a_batch_are_each_linked_to_its_one_span(traced):
    app, exporter = traced
    with app(batch_max_wait_ms=300) as client, ThreadPoolExecutor(2) as pool:
        sent = [
            pool.submit(
                client.post,
                "/predict/embed",
                json={"inputs": "a text"},
                headers={"traceparent": traceparent(trace_id)},
            )
            for trace_id in (CALLER_TRACE, OTHER_TRACE)
        ]
        assert [s.result(timeout=30).status_code for s in sent] == [200, 200]
        spans = finished(exporter, 2 * 3 + 4)  # per request 3 spans, per batch 4 (one head)
    print(tree(spans))
    batch = one(spans, "mts.batch")
    requests = [s for s in spans if s.name == "POST /predict/{task}"]
    assert {s.context.trace_id for s in requests} == {int(CALLER_TRACE, 16), int(OTHER_TRACE, 16)}
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in requests}
    assert batch.parent is not None and batch.parent.span_id in {
        s.context.span_id for s in requests
    }
    queues = [s for s in spans if s.name == "mts.queue"]
    assert {q.parent.span_id for q in queues if q.parent} == {s.context.span_id for s in requests}
    assert [[link.context.span_id for link in q.links] for q in queues] == [
        [batch.context.span_id]
    ] * 2
    assert dict(batch.attributes or {})["mts.batch.requests"] == 2


def test_a_request_run_inline_and_sent_without_a_traceparent_starts_its_own_trace(traced):
    app, exporter = traced
    with app() as client:
        for probe in ("/healthz", "/readyz", "/metrics"):  # never traced
            assert client.get(probe).status_code == 200
        assert client.post("/predict/embed", json={"inputs": "a text"}).status_code == 200
        spans = finished(exporter, 7)
    assert sorted(s.name for s in spans) == sorted(REQUEST_SPANS)
    request = one(spans, "POST /predict/{task}")
    assert request.parent is None
    assert {s.context.trace_id for s in spans} == {request.context.trace_id}
    batch = one(spans, "mts.batch")
    assert dict(batch.attributes or {})["mts.batch.inline"] is True
    queue = one(spans, "mts.queue")
    assert queue.start_time == queue.end_time  # inline: no wait


def test_with_no_endpoint_nothing_traces_and_fastapi_looks_for_no_provider(client):
    app = client.app
    assert TraceRequests not in [m.cls for m in app.user_middleware]
    assert app.state.services.predictor.batcher._tracing is None
    # FastAPI's own telemetry is off outright: it does not look for a global provider per
    # request, nor configure one from the environment (FASTAPI_OTEL_AUTO_CONFIGURE).
    config = app._telemetry
    assert not (config["tracing"] or config["metrics"] or config["logs"])
    assert config["auto_configure"] is False


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint: keeps each request's path, content type and body."""

    received: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        thread.join()


def test_spans_reach_an_otlp_http_receiver_at_the_endpoint_the_settings_name(repo, receiver):
    url, received = receiver
    settings = make_settings(repo, otlp_endpoint=url, batch_inline_max_tokens=0)
    headers = {"traceparent": traceparent(CALLER_TRACE), "x-request-id": "otlp-test"}
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        assert client.post("/predict/embed", json={"inputs": "a text"}, headers=headers).is_success
    # The app's shutdown flushed its batch of spans.
    assert received and {(path, kind) for path, kind, _ in received} == {
        ("/v1/traces", "application/x-protobuf")
    }
    spans, services = [], set()
    for _, _, body in received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    for span in spans:
        print(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex())
    assert services == {"multitask-serve"}
    assert sorted(s.name for s in spans) == sorted(REQUEST_SPANS)
    assert {s.trace_id.hex() for s in spans} == {CALLER_TRACE}
    [request] = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    assert request.parent_span_id.hex() == CALLER_SPAN
    assert {"key": "mts.request_id", "value": "otlp-test"} in [
        {"key": a.key, "value": a.value.string_value} for a in request.attributes
    ]
