"""Prometheus metrics on an injected registry, named ``mts_*`` with unit suffixes, and the
process's own (``process_*``, ``python_*``) on the same registry."""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

# From 100 us (a head-only head on a short text) to 10 s (a full batch of long texts).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_seconds = Histogram(
            "mts_request_duration_seconds",
            "Time to answer a prediction request, per task.",
            ["task"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        # Every HTTP answer, counted outermost (service/observability.py): 404s, 422s, and the 429s
        # and 413s the limits give before the app, which the per-task series never see. route is
        # the route template (e.g. /predict/{task}) or "other", never the raw path, so the series
        # stay bounded whatever paths clients send.
        self.http_requests = Counter(
            "mts_http_requests",
            "HTTP requests answered, per route template (other: no route), method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.requests = Counter(
            "mts_requests",
            "Prediction requests per task and outcome.",
            ["task", "outcome"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "mts_stage_duration_seconds",
            "Time per batch in a shared stage (tokenize, trunk).",
            ["stage"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.head_seconds = Histogram(
            "mts_head_duration_seconds",
            "Time per batch in one task's head, with post-processing.",
            ["task"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.trunk_runs = Counter(
            "mts_trunk_runs",
            "Trunk inference runs (one per batch, however many tasks read it).",
            registry=registry,
        )
        self.memory_splits = Counter(
            "mts_memory_split_groups",
            "Length groups of a batch run in several runs to fit the memory limit.",
            registry=registry,
        )
        self.head_load_seconds = Histogram(
            "mts_head_load_duration_seconds",
            "Time to validate and load a head: graph checks, session, one real inference.",
            ["task"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.head_load_failures = Counter(
            "mts_head_load_failures",
            "Heads refused at load (bad graph, wrong trunk, failed probe inference).",
            ["task"],
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "mts_queue_wait_duration_seconds",
            "Time a request waited for its micro-batch to start.",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_texts = Histogram(
            "mts_batch_texts",
            "Texts per trunk run.",
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.batch_tokens = Histogram(
            "mts_batch_tokens",
            "Real (unpadded) tokens per trunk run.",
            registry=registry,
            buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
        )
        self.heads_loaded = Gauge("mts_heads_loaded", "Heads currently served.", registry=registry)
        # Queued plus running prediction requests: the load signal an autoscaler reads (through
        # prometheus-adapter), since CPU saturates before latency shows the backlog.
        self.in_flight = Gauge(
            "mts_requests_in_flight",
            "Prediction requests accepted and not yet answered (queued or running).",
            registry=registry,
        )
        # Readiness probes run through the batcher but are counted only here: requests, queue
        # waits, batches, trunk runs and stage times never count one.
        self.readiness_probes = Counter(
            "mts_readiness_probes",
            "Readiness probes through the batch worker, per outcome: ok (the probe inference ran), "
            "busy (queued behind batches that finished), stuck, stopped, failed.",
            ["outcome"],
            registry=registry,
        )
        # Shadow runs (service/shadow.py): a candidate head on live traffic, answering nobody.
        self.shadow_texts = Counter(
            "mts_shadow_texts",
            "Texts a task's shadow candidate saw, per outcome: compared (with the served head), "
            "skipped (the shadow was busy with an earlier batch), failed (the candidate raised).",
            ["task", "outcome"],
            registry=registry,
        )
        self.shadow_agreements = Counter(
            "mts_shadow_agreements",
            "Compared texts on which the candidate agreed with the served head (same label, same "
            "entity spans, or embedding cosine >= 0.99).",
            ["task"],
            registry=registry,
        )
        self.shadow_head_seconds = Histogram(
            "mts_shadow_head_duration_seconds",
            "Time per batch in a task's shadow candidate, with post-processing and comparison.",
            ["task"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )

        # The process's CPU, memory, open files and start time, the interpreter's version and
        # garbage collections: what the default registry would show, on this one. Each registry
        # gets its own collectors (tests build many apps, each with a registry of its own).
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)  # registers nothing where gc has no statistics

    def forget_task(self, task: str) -> None:
        """A removed head's series go with it."""
        for family in (
            self.request_seconds,
            self.head_seconds,
            self.head_load_seconds,
            self.head_load_failures,
            self.shadow_agreements,
            self.shadow_head_seconds,
        ):
            with contextlib.suppress(KeyError):
                family.remove(task)
        for outcome in ("ok", "error"):
            with contextlib.suppress(KeyError):
                self.requests.remove(task, outcome)
        for outcome in ("compared", "skipped", "failed"):
            with contextlib.suppress(KeyError):
                self.shadow_texts.remove(task, outcome)
