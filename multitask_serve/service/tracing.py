"""Traces: each request's span and, under it, where its time went, exported by OpenTelemetry
(OTLP over HTTP) when an endpoint is configured; off, and all but free, otherwise.

The request's span is FastAPI's own server span (``FastAPI(telemetry=...)``, given our tracer
provider): the caller's W3C ``traceparent``/``tracestate`` make it a child of the caller's span, it
is named by the route template and carries the status. ``TraceRequests`` adds the request id to
it and hands it to the hooks on the request's path through ``current``: ``mts.queue`` (from
enqueue to the batch that takes the request), ``mts.response`` (serialising the answer) and the
tasks and texts the batcher was given. A micro-batch serves several requests, so its span
(``mts.batch``, with ``mts.tokenize``, ``mts.trunk`` per trunk run and ``mts.head`` per head run
under it) has one parent, the request that opened the batch, and a link to every request it
serves; each request's ``mts.queue`` span links to the batch that took it.

Nothing of OpenTelemetry is imported while tracing is off (the ``tracing`` extra need not be
installed): ``from_settings`` returns None, FastAPI's own telemetry is switched off, and every
hook is one check of a context variable or an attribute against None. A request its caller did
not sample (``traceparent`` flags 00) skips every hook, as with tracing off.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from multitask_serve.service.logs import request_id

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from multitask_serve.service.residency import LoadedHead
    from multitask_serve.service.settings import Settings

log = logging.getLogger(__name__)

# The instrumentation scope our spans are reported under.
SCOPE = "multitask_serve"
# service.name when OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by the SDK) name none.
SERVICE_NAME = "multitask-serve"

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# FastAPI's own telemetry with tracing off: it never looks for a global provider, and never
# configures one from FASTAPI_OTEL_AUTO_CONFIGURE (the settings decide, docs/deploy.md "Traces").
# Its metrics and logs stay off either way: /metrics and our log lines cover them.
FASTAPI_OFF: dict[str, Any] = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "auto_configure": False,
}


def _wall_ns(started: float, ended: float) -> tuple[int, int]:
    """Two ``time.perf_counter()`` readings as the wall clock's nanoseconds that spans carry, the
    clocks read once, so that the interval keeps its exact length."""
    end = time.time_ns() - round((time.perf_counter() - ended) * 1e9)
    return end - round((ended - started) * 1e9), end


@dataclass(frozen=True, slots=True)
class RequestTrace:
    """A traced request: its server span, and the tracing its own spans come from."""

    tracing: Tracing
    span: Span

    def submitted(self, tasks: Iterable[str], texts: int) -> None:
        """The tasks and texts the request handed the batcher, on its span."""
        self.span.set_attributes({"mts.tasks": list(tasks), "mts.texts": texts})

    def serialise(self, render: Callable[[], bytes]) -> bytes:
        """``render()``, in an ``mts.response`` span under the request's."""
        started = time.time_ns()
        body = render()
        self.tracing.child(self.span, "mts.response", started, {"mts.response.bytes": len(body)})
        return body


# The request in progress, when tracing is on and its caller did not sample it out; None
# otherwise. Set by ``TraceRequests`` (a task's copies of the context see it too).
current: ContextVar[RequestTrace | None] = ContextVar("mts_request_trace", default=None)


class BatchTrace:
    """One batch's span, current in the thread that runs the batch (``run``), so that the
    engine's hooks (``batch.get()``) put their spans under it."""

    def __init__(self, tracing: Tracing, span: Span, context: Context) -> None:
        self.tracing, self.span, self.context = tracing, span, context

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` with this batch current; an exception is recorded on the span."""
        token = batch.set(self)
        try:
            return fn(*args)
        except Exception as exc:
            from opentelemetry.trace import StatusCode

            self.span.record_exception(exc)
            self.span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            batch.reset(token)

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        return functools.partial(self.run, fn)

    def once(self, fn: Callable[..., T], *args: Any) -> T:
        """``run``, then the batch's span ends."""
        try:
            return self.run(fn, *args)
        finally:
            self.end()

    def end(self) -> None:
        self.span.end()

    def _span(self, name: str, started: float, ended: float, attributes: dict[str, Any]) -> None:
        start, end = _wall_ns(started, ended)
        span = self.tracing.tracer.start_span(
            name, context=self.context, attributes=attributes, start_time=start
        )
        span.end(end)

    def tokenize(self, started: float, ended: float, texts: int, rows: int) -> None:
        self._span("mts.tokenize", started, ended, {"mts.texts": texts, "mts.rows": rows})

    def trunk(
        self, started: float, ended: float, rows: int, width: int, taps: Iterable[int]
    ) -> None:
        attributes = {"mts.rows": rows, "mts.tokens": width, "mts.taps": sorted(taps)}
        self._span("mts.trunk", started, ended, attributes)

    def head(self, started: float, ended: float, head: LoadedHead, rows: int) -> None:
        spec = head.spec
        attributes = {
            "mts.task": spec.task,
            "mts.head.version": head.version,
            "mts.head.kind": str(spec.kind),
            "mts.head.branch_layer": spec.branch_layer,
            "mts.rows": rows,
        }
        self._span("mts.head", started, ended, attributes)


# The batch running in this thread (or, inline, on the event loop), when traced.
batch: ContextVar[BatchTrace | None] = ContextVar("mts_batch_trace", default=None)


class Tracing:
    """Our tracer, on a provider: built from the settings (``from_settings``) or given (tests)."""

    def __init__(self, provider: TracerProvider, *, owned: bool = False) -> None:
        """``owned``: built here, so shut down (its spans flushed) with the app."""
        self.provider, self.owned = provider, owned
        self.tracer: Tracer = provider.get_tracer(SCOPE)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """A provider exporting to the settings' OTLP endpoint in batches, off the request path;
        None when no endpoint is set, or the tracing extra is missing (logged: serving goes on)."""
        endpoint = settings.traces_endpoint
        if endpoint is None:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import SERVICE_NAME as NAME
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            log.error(
                "traces are not exported: an OTLP endpoint is set (%s) but OpenTelemetry's SDK "
                "is not installed (%s); install multitask-serve[tracing]",
                endpoint,
                exc,
            )
            return None
        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(NAME, "unknown_service")).startswith("unknown_service"):
            resource = resource.merge(Resource({NAME: SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("traces exported to %s", endpoint)
        return cls(provider, owned=True)

    def fastapi(self, exclude: Callable[[Scope], bool]) -> dict[str, Any]:
        """FastAPI's telemetry settings: its server span on our provider, nothing else; none for
        the requests ``exclude`` picks."""
        return {
            **FASTAPI_OFF,
            "tracing": True,
            "tracer_provider": self.provider,
            "operation_spans": False,  # its dependency and endpoint spans: ours say more
            "exclude": exclude,
        }

    def shutdown(self) -> None:
        if self.owned:
            self.provider.shutdown()

    def child(self, parent: Span, name: str, started_ns: int, attributes: dict[str, Any]) -> None:
        """A span under ``parent`` from ``started_ns`` to now."""
        from opentelemetry.trace import set_span_in_context

        span = self.tracer.start_span(
            name, set_span_in_context(parent), attributes=attributes, start_time=started_ns
        )
        span.end()

    def batch(
        self,
        requests: Sequence[tuple[RequestTrace | None, float, int]],
        taken: float,
        inline: bool = False,
    ) -> BatchTrace | None:
        """The span of a batch taken at ``taken`` (perf_counter) for ``requests`` (each its
        trace, when it was enqueued, its rows), and each traced request's ``mts.queue`` span
        from enqueued to taken. None when no request of the batch is traced. ``inline``: run at
        once on the event loop, never queued (service/batcher.py ``_run_inline``)."""
        traced = [(r, enqueued, rows) for r, enqueued, rows in requests if r is not None]
        if not traced:
            return None
        from opentelemetry.trace import Link, set_span_in_context

        first = traced[0][0]
        _, taken_ns = _wall_ns(taken, taken)
        span = self.tracer.start_span(
            "mts.batch",
            set_span_in_context(first.span),
            start_time=taken_ns,
            links=[Link(r.span.get_span_context()) for r, _, _ in traced],
            attributes={
                "mts.batch.requests": len(requests),
                "mts.rows": sum(rows for _, _, rows in requests),
                "mts.batch.inline": inline,
            },
        )
        link = [Link(span.get_span_context())]
        for request, enqueued, rows in traced:
            queued = self.tracer.start_span(
                "mts.queue",
                set_span_in_context(request.span),
                links=link,
                attributes={"mts.rows": rows},
                start_time=taken_ns - round((taken - enqueued) * 1e9),
            )
            queued.end(taken_ns)
        return BatchTrace(self, span, set_span_in_context(span))


class TraceRequests:
    """Inside FastAPI's server span: names the request id on it and makes it ``current`` for the
    request's hooks. Added only with tracing on, inside ``RequestId``."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        from opentelemetry.trace import get_current_span

        self.app, self.tracing = app, tracing
        self._span = get_current_span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        span = self._span() if scope["type"] == "http" else None
        if span is None or not span.is_recording():  # not HTTP, or not sampled
            await self.app(scope, receive, send)
            return
        span.set_attribute("mts.request_id", request_id.get() or "")
        token = current.set(RequestTrace(self.tracing, span))
        try:
            await self.app(scope, receive, send)
        finally:
            current.reset(token)


def fastapi_telemetry(tracing: Tracing | None, exclude: Callable[[Scope], bool]) -> dict[str, Any]:
    """What ``FastAPI(telemetry=...)`` gets: our server span when tracing, but for the requests
    ``exclude`` picks (an ASGI scope's); nothing otherwise."""
    return dict(FASTAPI_OFF) if tracing is None else tracing.fastapi(exclude)
