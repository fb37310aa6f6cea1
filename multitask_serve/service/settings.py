"""Every knob of the service, read once from ``MTS_*`` environment variables or passed in tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from multitask_serve.modelrepo.types import TASK_NAME_RE
from multitask_serve.service.selection import TaskSelector


class Settings(BaseSettings):
    # validate_by_name: tests pass the fields that have aliases (OpenTelemetry's variables) by name.
    model_config = SettingsConfigDict(env_prefix="MTS_", extra="ignore", validate_by_name=True)

    # The model repository: trunk and head versions, the one source of truth.
    repository: Path = Path("model-repo")
    host: str = "127.0.0.1"
    port: int = 8000
    # A second listener, on MTS_HOST and this port, for the operator's side: /admin/... and
    # /metrics are served there and answer 404 on MTS_PORT, so that whatever exposes the
    # inference port (a Service, an Ingress) cannot expose them. /healthz and /readyz answer on
    # both; the rest (inference, /tasks, /docs) only on MTS_PORT. Unset: one listener serves
    # everything, as a local `mts serve` does.
    admin_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Bearer token for /admin. Unset or empty (a Kubernetes Secret left blank) means admin is
    # disabled, unless explicitly allowed below.
    admin_token: SecretStr | None = None
    # Local experiments only: admin endpoints without a token. Never in production.
    allow_unauthenticated_admin: bool = False
    # ONNX Runtime threads per session run; 0 lets ORT use every core. One process per pod in
    # Kubernetes, so the pod's CPU limit is the number to put here.
    intra_op_threads: int = 0
    # ONNX Runtime's CPU memory arena keeps each session's largest activations resident for reuse:
    # with a trunk cut in segments and heads with layers of their own, one batch of long texts
    # left 2.7 GiB resident (docs/architecture.md, memory). Off (the default) gives them back
    # after each run, which is what keeps memory_limit_mb's bound; speed side by side in
    # BENCHMARKS.md.
    cpu_arena: bool = False
    # The replica's memory limit in MiB, from which the room for a batch's activations is derived
    # (service/memory.py): runs are cut to fit within 80% of it beside what is resident, and a text
    # too long to fit even alone gets 413. Unset: the cgroup's limit (a container's), if any;
    # 0: no bound. The manifests set it from the container's limit.
    memory_limit_mb: float | None = None
    # Cut the trunk at the taps heads read and run each text only as deep as its heads need.
    # False runs every layer for every batch (the comparison in BENCHMARKS.md).
    trunk_segments: bool = True
    # Where the trunk and heads run. cuda needs the gpu extra (onnxruntime-gpu); the trunk's taps
    # then stay on the device between trunk and heads (IO binding).
    device: Literal["cpu", "cuda"] = "cpu"
    cuda_device_id: int = 0
    # Keep the trunk's taps where it ran, between trunk and heads. Unset: on for cuda, off for the
    # CPU (where it only adds work). Off on cuda copies every tap to the host and back.
    io_binding: bool | None = None
    # Which trunk to run. "fp32": model.onnx, what heads were trained against. A variant stored in
    # trunk.json, e.g. "int8" (`mts quantize`): faster and smaller on the CPU, with outputs that
    # move slightly. "fp16": made from model.onnx at load time, for cuda only (CPU kernels run
    # fp16 graphs through casts, slower than fp32). Measured quality changes in BENCHMARKS.md.
    trunk_precision: str = "fp32"
    # Tokens per row of a batch: the served length. 0 = the trunk's own maximum from trunk.json.
    # Lower is faster: attention cost grows with the square of length.
    max_length: int = 0
    # A text longer than the served length is read whole, in overlapping windows of that length
    # (each a row of the batch), and the windows' answers combined (docs/architecture.md, long
    # texts); true cuts it at the served length instead, as a request's own "truncate" does.
    # The server's default for requests that do not say (OpenAI's embeddings; TEI keeps its own
    # truncate, false by default: refused).
    truncate: bool = False
    # Open Inference Protocol: one more model name, standing for the server as a whole. GET
    # /v2/models/<name>/ready answers when the server is ready (a real inference, as
    # /v2/health/ready does) and GET /v2/models/<name> lists no tensors; inference stays per task
    # (400 naming the way). KServe's ServingRuntime sets it to the InferenceService's name, which
    # tools take for a model's. A task of the same name is that task. Unset: no such model.
    oip_model_alias: str | None = None
    # Tokens neighbouring windows share. Unset: 32, or half a window when that is less.
    window_overlap: NonNegativeInt | None = None
    # Windows one text may take; a longer text gets 413 naming it (or is cut, when its request
    # asks for truncation). Bounds what one text can claim: 32 windows of 256 tokens read about
    # 7,100 tokens of text with the default overlap (the longest BBC test article takes 20).
    # 0: no limit.
    max_windows: NonNegativeInt = 32
    # Texts in one request. Bounds the memory and latency one client can claim.
    max_batch_texts: int = 64
    # Request body limits: predictions are small JSON; head archives carry ONNX weights. An upload
    # is streamed to a file on the repository's file system, not held in memory (refused with 413
    # as soon as it passes the limit); only its unpacked members, at most max_upload_bytes in
    # total, are read into memory.
    max_body_bytes: int = 1 << 20
    max_upload_bytes: int = 512 << 20
    # uvicorn's event loop and HTTP/1.1 parser. "auto" takes uvloop and httptools where installed
    # (the serve extra does not install them: side by side, asyncio and h11 answered single-text
    # requests as fast or faster here, bench/results/targets-cpu.json).
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    http_parser: Literal["auto", "h11", "httptools"] = "auto"
    # Micro-batching: concurrent requests (any tasks) share one trunk run. A batch closes at
    # batch_max_texts texts, batch_max_tokens estimated tokens, or batch_max_wait_ms after its
    # first request arrived. With 0, a batch is what queued up while the previous one ran: no
    # added latency when traffic is light, big batches under load. A wait builds bigger batches
    # at light load, for that much added latency.
    batch_max_texts: int = 32
    batch_max_tokens: int = 8192
    batch_max_wait_ms: float = 0.0
    # With batch_max_wait_ms 0, a request of at most this many estimated tokens that finds
    # nothing queued and no batch running is run at once on the event loop thread, instead of
    # being handed to the inference thread and back: 0.3-0.7 ms less per single-text request at
    # concurrency 1 (BENCHMARKS.md); under load batches form as before. Meanwhile the event loop
    # answers nothing else (health checks included), so the bound keeps that to a few ms of
    # work; should such a run hang, probes time out instead of answering 503. 0: always hand over.
    batch_inline_max_tokens: int = 256
    # A micro-batch runs as length groups, each padded to its own longest text, when that saves
    # more padded tokens than this many per extra run (the fixed cost of a trunk + heads run, in
    # tokens). Unset: 32 on the CPU (measured, bench/length_groups.py), never split on cuda,
    # where a run's fixed cost dwarfs padding.
    batch_group_cost_tokens: int | None = None
    # Texts waiting for a batch before new requests get 429 with Retry-After. Bounds memory and
    # the queueing delay an accepted request can see (about this many texts' worth of trunk time).
    max_queued_texts: int = 1024
    # Inference requests (/predict and the v2 infer routes, one count) in flight, from their first
    # byte to their answer, before new ones get 429 with Retry-After. Under overload accepted
    # requests' latency is about this divided by the throughput (measured: p99 0.87 s at ~185
    # requests/s on 2 cores, docs/reliability.md); higher admits more concurrent clients, lower
    # bounds latency tighter. 0 disables.
    max_in_flight_requests: int = 128
    # Seconds a new request may expect to wait in the queue, at the recent inference pace, before
    # it gets 429 instead. Bounds the latency of accepted requests under overload whatever the
    # model's speed; 0 disables (only max_queued_texts applies).
    max_queue_wait_seconds: float = 0.0
    # Head loads (validation + a real inference) running at once, off the request threads. Each
    # load holds a copy of the graph in memory while it runs.
    max_concurrent_loads: int = 2
    # The loaded heads' memory in MiB (graph bytes plus a session's fixed cost each,
    # service/residency.py). Every stored head is served; beyond this, heads load when a request
    # asks for them and others are evicted (recency, size and load time decide which). Unset:
    # every head is loaded at start and stays loaded. Shadow candidates are not counted.
    head_memory_mb: float | None = None
    # Tasks whose heads are loaded at start and never evicted (comma-separated; the admin API
    # pins and unpins others): the latency-critical few.
    pinned_tasks: Annotated[list[str], NoDecode] = []
    # Which of the repository's tasks this replica set serves (comma-separated names or globs,
    # e.g. "sentiment,topic-*"): a static shard of a fleet that shares one repository
    # (docs/scaling.md). The rest are not listed, loaded or routable here. Unset: every task.
    tasks: Annotated[list[str], NoDecode] = []
    # Which loaded head goes first when room is needed: "gds" (GreedyDual-Size: recency, uses,
    # size and load time; measured better than "lru" on a skewed trace, bench/eviction.py) or "lru".
    head_eviction: Literal["gds", "lru"] = "gds"
    # When a replica loading heads on demand gives freed heap back to the OS (glibc's
    # malloc_trim, off the request's path): "resident" when its resident memory passes the
    # loaded heads' bytes over what it held at start by 5% of MTS_HEAD_MEMORY_MB (at least 32
    # MiB), whatever freed the heap (evicted heads, graphs that loads and compilations parsed);
    # "evicted" once 64 MiB of heads held in the heap were evicted, the earlier rule, kept to
    # compare (bench/skewed_heads.py).
    heap_trim: Literal["resident", "evicted"] = "resident"
    # With MTS_HEAD_MEMORY_MB, where this replica keeps heads compiled for its CPU (local disk,
    # never the shared repository; service/compiled.py): an evicted head with copied layers loads
    # again from there ~2x cheaper (bench/cold_loads.py). Unset: a temporary folder, removed at
    # shutdown. A compiled head takes about twice its head.onnx on disk.
    head_cache_dir: Path | None = None
    # The compiled heads' disk bytes at most, in MiB (least recently used deleted first). Unset:
    # 10 x MTS_HEAD_MEMORY_MB, room for every head when the budget holds a fifth of them; too
    # small a cache compiles heads that are deleted before they are loaded again, which costs
    # more than it saves (bench/skewed_heads.py). 0: no compiled heads.
    head_cache_mb: NonNegativeFloat | None = None
    # Heads whose head.onnx is smaller than this (MiB) are not compiled: a classifier-only head
    # (a few KB) loads in a few ms as it is.
    head_cache_min_mb: NonNegativeFloat = 1.0
    # Seconds between looks at the repository for heads other replicas added, replaced, rolled
    # back or removed. Lower converges faster and costs a directory scan per look; 0 disables.
    repository_poll_seconds: float = 2.0
    # Graceful shutdown. On SIGTERM /readyz fails at once but requests are served for
    # shutdown_drain_seconds more, while load balancers notice; then no new connections are
    # accepted and in-flight requests get up to shutdown_grace_seconds to finish (the rest are
    # cancelled). Keep the sum under Kubernetes' terminationGracePeriodSeconds (30 by default).
    shutdown_drain_seconds: float = 5.0
    shutdown_grace_seconds: int = 20
    # /readyz queues a probe inference through the batch worker, like a request, and fails (503)
    # when the worker has stopped, or has held work this many seconds without finishing a batch
    # (a hung inference); it answers within this time. A probe queued behind batches that do
    # finish answers ready: load is not taken for a hang. It must exceed batch_max_wait_ms plus
    # the slowest batch, or one long batch reads as a hang (measured: 32 texts of 256 tokens,
    # what batch_max_tokens allows, took 5.0-6.8 s with MiniLM-L6 on 2 busy cores); lower notices
    # a hang sooner. Keep it under the readinessProbe's timeoutSeconds (15 in k8s/), or the
    # kubelet gives up first and the reason is lost.
    readiness_timeout_seconds: PositiveFloat = 10.0
    # Seconds an idle HTTP/1.1 connection is kept open. A client (or load balancer) that sends on
    # a pooled connection just as the server closes it gets "server disconnected without a
    # response" (a 502 from a balancer); above the balancers' idle timeouts (60 s on AWS ALB and
    # GCP, 75 s nginx) the client closes first. uvicorn's own default is 5 s.
    keep_alive_seconds: int = 75
    # uvicorn's log level (its access and error lines); `mts --log-level` sets the rest.
    log_level: str = "info"
    # Log lines as "text" (one readable line each) or "json" (one object per line: time, level,
    # logger, message, request_id, and method/path/status on access lines), for a log pipeline
    # that indexes fields; longer lines, worse to read in a terminal. Either way each line logged
    # while a request is handled names its X-Request-ID (the client's, or a generated one).
    log_format: Literal["text", "json"] = "text"
    # Traces (docs/deploy.md, "Traces"): OpenTelemetry spans of each request (its queue wait, the
    # batch's tokenization, trunk and head runs, its response), exported over OTLP/HTTP, with
    # the caller's W3C traceparent as their parent. Off unless an endpoint is set, and then free:
    # nothing of OpenTelemetry is imported and each hook on the request path is a None check.
    # Needs the tracing extra (the serving images have it). The URL spans are posted to, from
    # MTS_OTLP_TRACES_ENDPOINT or OpenTelemetry's own OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: these
    # settings read the standard variables that decide whether and where spans go, so that they
    # work here as on any instrumented service; the SDK reads the rest itself (headers, service
    # name, sampler, batching: OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, ...).
    otlp_traces_endpoint: Annotated[
        str | None,
        Field(
            validation_alias=AliasChoices(
                "mts_otlp_traces_endpoint", "otel_exporter_otlp_traces_endpoint"
            )
        ),
    ] = None
    # A collector's base URL, spans posted to <it>/v1/traces, when no traces endpoint is set:
    # from MTS_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT.
    otlp_endpoint: Annotated[
        str | None,
        Field(validation_alias=AliasChoices("mts_otlp_endpoint", "otel_exporter_otlp_endpoint")),
    ] = None
    # OpenTelemetry's off switch, OTEL_SDK_DISABLED=true: no traces, whatever the endpoints.
    otel_sdk_disabled: Annotated[bool, Field(validation_alias="otel_sdk_disabled")] = False

    @field_validator("pinned_tasks", "tasks", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [task.strip() for task in value.split(",") if task.strip()]
        return value

    @field_validator("head_memory_mb")
    @classmethod
    def _positive_budget(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("MTS_HEAD_MEMORY_MB must be positive (unset: every head loaded)")
        return value

    @field_validator("oip_model_alias")
    @classmethod
    def _alias_is_a_model_name(cls, name: str | None) -> str | None:
        if not name:  # unset, or left blank
            return None
        if not TASK_NAME_RE.fullmatch(name):
            raise ValueError(
                f"MTS_OIP_MODEL_ALIAS {name!r} is not a model name: 1-64 of a-z, 0-9, '_' and '-', "
                "starting with a letter or digit"
            )
        return name

    @field_validator("otlp_traces_endpoint", "otlp_endpoint")
    @classmethod
    def _otlp_url(cls, url: str | None) -> str | None:
        if not url:  # unset, or left blank in a ConfigMap
            return None
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"an OTLP endpoint is an http:// or https:// URL, not {url!r}")
        return url

    @field_validator("admin_token")
    @classmethod
    def _empty_token_is_unset(cls, token: SecretStr | None) -> SecretStr | None:
        return token if token is not None and token.get_secret_value() else None

    @model_validator(mode="after")
    def _admin_port_is_another_port(self) -> Settings:
        if self.admin_port is not None and self.admin_port == self.port:
            raise ValueError(
                f"MTS_ADMIN_PORT ({self.admin_port}) must differ from MTS_PORT: it is a second "
                "listener (unset it to serve everything on MTS_PORT)"
            )
        return self

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> Settings:
        if self.trunk_precision == "fp16" and self.device != "cuda":
            raise ValueError(
                "MTS_TRUNK_PRECISION=fp16 needs MTS_DEVICE=cuda: on the CPU an fp16 trunk runs "
                "through casts and is slower than fp32"
            )
        return self

    @model_validator(mode="after")
    def _pins_are_selected(self) -> Settings:
        selector = self.selector  # raises SelectorError (a ValueError) for a bad pattern
        outside = [task for task in self.pinned_tasks if not selector(task)]
        if outside:
            raise ValueError(
                f"MTS_PINNED_TASKS names {', '.join(outside)}, which MTS_TASKS ({selector}) "
                "does not select: this replica set would never serve them"
            )
        return self

    @property
    def selector(self) -> TaskSelector:
        return TaskSelector.parse(self.tasks)

    @property
    def traces_endpoint(self) -> str | None:
        """Where spans are posted; None: tracing off. The traces endpoint wins over the base
        URL, as in OpenTelemetry."""
        if self.otel_sdk_disabled:
            return None
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_endpoint:
            return self.otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    def admin_enabled(self) -> bool:
        return self.admin_token is not None or self.allow_unauthenticated_admin
