"""Prometheus metrics on an injected registry, named ``mts_*`` with unit suffixes, and the
process's own (``process_*``, ``python_*``) on the same registry.

The scrape must stay small however many tasks are served (at 1,000 tasks that all had traffic,
at most 256 KiB: tests/integration/test_metrics_size.py), so a series is per task only where it
pays for itself. One counter line per task and outcome (``mts_requests_total``) tells a user how
much traffic and how many errors each task gets. A histogram is 19 lines per label set (16
buckets, +Inf, sum, count): per task, each of the three latency histograms cost ~1.4 KiB of every
scrape for every task, and the time they split is mostly the queue, the shared trunk and the
batch, the same for every task. So they are pooled over tasks, or split by something bounded (the
head's kind). Per-task series that remain are created only by something rare: a refused head, a
shadow candidate (few at a time).
"""

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
    disable_created_metrics,
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

# A cold load: a classifier-only head in a few ms, one with three copied layers in ~0.1 s; fine
# steps around the 150 ms a load should stay under.
COLD_LOAD_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # prometheus_client adds a `<name>_created` sample (the series' creation time) to every
        # counter and histogram series; the text format /metrics serves exposes each as a gauge
        # series of its own, doubling the per-task counters' lines (1,000 tasks with 64-character
        # names, each answered and failed: 491 KiB with them, 232 KiB without), and nothing here
        # reads them (no panel, alert or adapter rule). The switch is process-wide (read at each
        # scrape, by every registry): this process's only registries are the service's own.
        disable_created_metrics()
        self.registry = registry
        # Pooled over tasks: a request's latency is mostly its queue wait, the shared trunk and
        # its batch, the same for every task, and a histogram per task cost ~1.4 KiB a task.
        # Per-task traffic and errors are mts_requests_total's; a slow kind of head shows in
        # mts_head_duration_seconds{kind}. One observation per task a request asked for (a
        # request for 3 tasks counts 3), so _count matches mts_requests_total{outcome="ok"}.
        self.request_seconds = Histogram(
            "mts_request_duration_seconds",
            "Time to answer a prediction request, over all tasks (once per task it asked for).",
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
        # Per task: the one per-task series of the serving path. Traffic and error rate are what a
        # user needs per task (the dashboard's task variable, throughput and errors per task), and
        # a counter costs one line per task and outcome.
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
        # Per kind, not per task: four kinds at most, and a head's time is set mostly by its kind
        # (its decoding: vectors, label scores, entity spans) and depth, which the kind splits.
        self.head_seconds = Histogram(
            "mts_head_duration_seconds",
            "Time per batch in one head, with post-processing, per kind of head.",
            ["kind"],
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
        # Pooled over tasks: a load time per task would be ~1.5 KiB of every scrape for each head
        # ever loaded, for a number read only when loads get slow; a refused head is named by
        # mts_head_load_failures_total{task}.
        self.head_load_seconds = Histogram(
            "mts_head_load_duration_seconds",
            "Time to validate and load a head: graph checks, session, one real inference.",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        # Per task, created at a task's first refusal: MtsHeadLoadFailures names the head to fix,
        # and a healthy replica has none of these series.
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
        # Per kind of head, not per task (19 lines a label set, as for the latency histograms);
        # per task, a counter of the texts that took more than one window, created by a task's
        # first long text: which tasks get long texts, and how often.
        self.text_windows = Histogram(
            "mts_text_windows",
            "Windows per text read (1: it fit the served length, or was cut), per kind of head.",
            ["kind"],
            registry=registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
        )
        self.long_texts = Counter(
            "mts_long_texts",
            "Texts longer than the served length read in several windows, per task.",
            ["task"],
            registry=registry,
        )
        self.heap_trims = Counter(
            "mts_heap_trims",
            "Freed heap given back to the OS because resident memory passed what the loaded "
            "heads account for (MTS_HEAP_TRIM=resident).",
            registry=registry,
        )
        self.heads_served = Gauge(
            "mts_heads_served", "Tasks served (each stored task's current head).", registry=registry
        )
        # Residency (service/residency.py): which served heads are loaded, within
        # MTS_HEAD_MEMORY_MB; the rest load on demand.
        self.heads_loaded = Gauge(
            "mts_heads_loaded",
            "Heads loaded (a session in memory), pinned ones included.",
            registry=registry,
        )
        self.head_loaded_bytes = Gauge(
            "mts_head_loaded_bytes",
            "What the loaded heads count against MTS_HEAD_MEMORY_MB (graph bytes plus a "
            "session's fixed cost each).",
            registry=registry,
        )
        self.head_memory_budget_bytes = Gauge(
            "mts_head_memory_budget_bytes",
            "MTS_HEAD_MEMORY_MB in bytes (+Inf: every head loaded).",
            registry=registry,
        )
        self.head_lookups = Counter(
            "mts_head_lookups",
            "Heads a prediction asked for, per result: hit (loaded), miss (loaded on demand, or "
            "joined a load under way).",
            ["result"],
            registry=registry,
        )
        self.head_cold_load_seconds = Histogram(
            "mts_head_cold_load_duration_seconds",
            "Time to load a served head on demand, from its request's miss to the head loaded.",
            registry=registry,
            buckets=COLD_LOAD_BUCKETS,
        )
        self.head_evictions = Counter(
            "mts_head_evictions",
            "Heads unloaded to keep the loaded ones within MTS_HEAD_MEMORY_MB.",
            registry=registry,
        )
        self.head_compiled_lookups = Counter(
            "mts_head_compiled_lookups",
            "Loads of heads large enough to compile, per result: hit (loaded from the replica's "
            "compiled cache, MTS_HEAD_CACHE_DIR) or miss (loaded from the repository).",
            ["result"],
            registry=registry,
        )
        self.head_compiled_bytes = Gauge(
            "mts_head_compiled_bytes",
            "Bytes of compiled heads in the replica's cache (at most MTS_HEAD_CACHE_MB).",
            registry=registry,
        )
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
        # Shadow runs (service/shadow.py): a candidate head on live traffic, answering nobody. Per
        # task: the agreement of a task's candidate is the point of shadowing it, and the series
        # exist only for the few tasks with a shadow (each is dropped with its task).
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
        """A removed head's series go with it (the per-task ones: the pooled histograms keep
        what its requests and loads added)."""
        for family in (
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
