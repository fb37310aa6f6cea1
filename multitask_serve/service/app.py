"""The one wiring point: ``create_app(settings)`` builds sessions, registry and engine.

Nothing lives at module level; tests and the CLI each pass their own settings and metrics registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError
from multitask_serve.modelrepo.types import EXACT_INTEGER_PRODUCTS, TrunkSpec, trunk_fingerprint
from multitask_serve.service import admin, oip, openai_compat, routes, tei
from multitask_serve.service.batcher import Batcher
from multitask_serve.service.compiled import CompiledHeads
from multitask_serve.service.engine import Engine
from multitask_serve.service.http_errors import install_handlers
from multitask_serve.service.limits import BodyLimit, InferenceRoutes, InFlightLimit
from multitask_serve.service.listeners import ListenerSplit
from multitask_serve.service.memory import MIB, ActivationModel, MemoryBudget, cgroup_limit_mb
from multitask_serve.service.memory import describe as describe_memory
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.observability import RequestCounter, RequestId
from multitask_serve.service.openapi import document_errors
from multitask_serve.service.pending import PendingTrainer
from multitask_serve.service.predict import Predictor
from multitask_serve.service.registry import HeadRegistry
from multitask_serve.service.residency import POLICIES
from multitask_serve.service.schemas import SERVICE
from multitask_serve.service.sessions import Runtime
from multitask_serve.service.settings import Settings
from multitask_serve.service.shadow import Shadows
from multitask_serve.service.state import Services
from multitask_serve.service.tokenize import TextEncoder
from multitask_serve.service.tracing import TraceRequests, Tracing, fastapi_telemetry
from multitask_serve.service.trunk import TrunkSession

log = logging.getLogger(__name__)

# Every wire format the app speaks (each its own module), and the routes of theirs that run
# inference: they share one in-flight bound (service/limits.py).
FORMATS = (SERVICE, oip.OIP, tei.TEI, openai_compat.OPENAI)
INFERENCE = InferenceRoutes(FORMATS)

# Niceness of head-load threads: above serving's 0, so loads take the CPU serving leaves.
LOAD_NICENESS = 10
# Never traced: the kubelet's probes and Prometheus' scrapes, every few seconds each.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def _memory_limit(settings: Settings) -> float | None:
    """MTS_MEMORY_LIMIT_MB, else the cgroup's limit; None: no bound. The budget is the host's:
    on cuda activations live on the device, which this model does not describe."""
    if settings.device != "cpu" or settings.memory_limit_mb == 0:
        return None
    return settings.memory_limit_mb or cgroup_limit_mb()


def create_app(
    settings: Settings | None = None,
    metrics_registry: CollectorRegistry | None = None,
    train_pending: Sequence[str] | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """Load the trunk and every head's current version from the repository, then build the app.

    ``train_pending``: the command (``mts train-pending ...``) that trains the heads the
    repository lists as pending, in a child process while the app serves (service/pending.py);
    None leaves them pending. Only ``mts serve --build-if-missing`` passes one: the serving
    image has no torch to train with.

    ``tracing``: where spans go (tests pass an in-memory exporter's); None: to the settings'
    OTLP endpoint, or nowhere (off) when none is set (service/tracing.py).
    """
    settings = settings or Settings()
    tracing = tracing or Tracing.from_settings(settings)
    repo = ModelRepository(settings.repository)
    trunk_spec = repo.read_trunk_spec()
    # fp16 is made from the reference graph at load time; other precisions are stored variants.
    fp16 = settings.trunk_precision == "fp16"
    trunk_path = _checked_trunk(repo, trunk_spec, "fp32" if fp16 else settings.trunk_precision)
    repo.sweep()
    max_length = min(settings.max_length or trunk_spec.max_length, trunk_spec.max_length)
    metrics = Metrics(metrics_registry or CollectorRegistry())
    runtime = Runtime(
        settings.device,
        settings.cuda_device_id,
        settings.intra_op_threads,
        settings.io_binding,
        cpu_arena=settings.cpu_arena,
    )
    runtime.check()
    trunk = TrunkSession(
        trunk_path, runtime, "fp16" if fp16 else "fp32", segmented=settings.trunk_segments
    )
    encoder = TextEncoder(
        repo.tokenizer_path, max_length, trunk_spec.input_names, settings.window_overlap
    )
    group_cost = settings.batch_group_cost_tokens
    budget = MemoryBudget(_memory_limit(settings), ActivationModel(trunk_spec.hidden_size))
    engine = Engine(
        trunk_spec, trunk, encoder, metrics, runtime, group_cost, budget, settings.max_windows
    )
    # /readyz's probe inference: the same sessions, run by the batch worker in its turn, but
    # observed in metrics of its own, so that probes stay out of the serving series.
    probe_engine = Engine(
        trunk_spec, trunk, encoder, Metrics(CollectorRegistry()), runtime, group_cost
    )
    # Loads of heads a request waits for (not loaded, within MTS_HEAD_MEMORY_MB): off the event
    # loop and the batch thread, at serving's CPU priority, since a request waits on each.
    demand = ThreadPoolExecutor(settings.max_concurrent_loads, thread_name_prefix="head-demand")
    compiled, compile_thread, made_cache_dir = _compiled_heads(settings, runtime, metrics)
    registry = HeadRegistry(
        repo,
        trunk_spec,
        engine.probe,
        metrics,
        demand,
        runtime,
        budget=None if settings.head_memory_mb is None else int(settings.head_memory_mb * MIB),
        pinned=settings.pinned_tasks,
        policy=POLICIES[settings.head_eviction](),
        compiled=compiled,
        heap_trim=settings.heap_trim,
        selector=settings.selector,
    )
    # Shadow candidates run on one thread of their own at the loads' lower CPU priority.
    shadow_thread = ThreadPoolExecutor(1, thread_name_prefix="shadow", initializer=_background)
    shadows = Shadows(registry, engine.run_shadow, metrics, shadow_thread)
    failed = registry.load_repository()
    registry.residency.mark_baseline()
    shadows.sync()
    log.info(
        "trunk %s (%s, %s %s%s), %d heads served%s, %d loaded%s",
        trunk_spec.base_model,
        trunk_spec.fingerprint[:12],
        settings.device,
        settings.trunk_precision,
        ", IO binding" if runtime.bound else "",
        len(registry.snapshot()),
        "" if registry.selector.everything else f" (MTS_TASKS={registry.selector})",
        len(registry.residency.tasks()),
        f", {len(failed)} refused: {failed}" if failed else "",
    )
    describe_memory(budget, settings.cpu_arena)

    batcher = Batcher(
        engine,
        metrics,
        settings.batch_max_texts,
        settings.batch_max_tokens,
        settings.batch_max_wait_ms / 1000,
        max_length,
        settings.max_queued_texts,
        settings.max_queue_wait_seconds,
        shadows.runner,
        settings.batch_inline_max_tokens,
        # A text past MTS_MAX_WINDOWS is refused by the engine, so it counts as that many.
        lambda tokens: min(encoder.windows(tokens), settings.max_windows or tokens),
        tracing=tracing,
    )
    # Head loads (validation, session, probe inference) run here, off the request threads, at
    # most max_concurrent_loads at a time, at a lower CPU priority than serving.
    loads = ThreadPoolExecutor(
        settings.max_concurrent_loads, thread_name_prefix="head-load", initializer=_background
    )

    trainer = (
        PendingTrainer(train_pending, repo, registry, loads, settings.max_upload_bytes)
        if train_pending is not None
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher = RepositoryWatcher(registry, shadows, metrics, settings.repository_poll_seconds)
        watcher.start()
        batcher.start()
        if trainer is not None:
            trainer.start()
        try:
            yield
        finally:
            if trainer is not None:  # first: it may be adding a head through the loads
                await asyncio.to_thread(trainer.stop)
            await batcher.stop()
            shadow_thread.shutdown(wait=True)
            watcher.stop()
            loads.shutdown(wait=True)
            demand.shutdown(wait=True)
            if compile_thread is not None:
                compile_thread.shutdown(wait=True, cancel_futures=True)
            if made_cache_dir is not None:
                shutil.rmtree(made_cache_dir, ignore_errors=True)
            if tracing is not None:  # last: the spans of the last batches are exported
                await asyncio.to_thread(tracing.shutdown)

    app = FastAPI(
        lifespan=lifespan,
        title="multitask-serve",
        summary="Many NLP tasks from one frozen transformer trunk and hot-pluggable ONNX heads.",
        version="0.1.0",
        # Its server span is each request's span when tracing, on our provider; off otherwise.
        telemetry=cast(
            TelemetryConfig,
            fastapi_telemetry(tracing, lambda scope: scope.get("path") in UNTRACED),
        ),
    )
    draining = threading.Event()
    predictor = Predictor(registry, batcher, metrics, settings, probe_engine, draining)
    app.state.services = Services(
        settings=settings,
        predictor=predictor,
        registry=registry,
        shadows=shadows,
        engine=engine,
        metrics=metrics,
        loads=loads,
        trainer=trainer,
        max_length=max_length,
        draining=draining,
    )
    install_handlers(app, SERVICE)
    # The router tries routes in this order and each miss costs microseconds: inference routes
    # first, admin (rare) last.
    app.include_router(routes.router)
    app.include_router(tei.router)
    app.include_router(openai_compat.router)
    app.include_router(oip.router)
    app.include_router(admin.router)
    # /openapi.json documents every error each route answers, in its wire format.
    document_errors(app, INFERENCE, SERVICE)
    app.add_middleware(
        BodyLimit,
        default=settings.max_body_bytes,
        upload=settings.max_upload_bytes,
        inference=INFERENCE,
        own=SERVICE,
    )
    # Added last, so it runs first: an overloaded process refuses before reading the body.
    app.add_middleware(InFlightLimit, limit=settings.max_in_flight_requests, inference=INFERENCE)
    if settings.admin_port is not None:
        # /admin/... and /metrics on the admin listener only, inference on the other; its 404s
        # are counted, logged and carry a request id like the router's own.
        app.add_middleware(ListenerSplit, admin_port=settings.admin_port, own=SERVICE)
    if tracing is not None:  # inside RequestId, which it reads: the request id on its span
        app.add_middleware(TraceRequests, tracing=tracing)
    # Outermost: every answer, the limits' 429 and 413 included, is counted by route and status
    # and carries an X-Request-ID that every log line of the request names.
    app.add_middleware(RequestCounter, counter=metrics.http_requests, routes=app.router.routes)
    app.add_middleware(RequestId)
    return app


def _compiled_heads(
    settings: Settings, runtime: Runtime, metrics: Metrics
) -> tuple[CompiledHeads | None, ThreadPoolExecutor | None, Path | None]:
    """The replica's compiled cache (with a budget, on the CPU, unless MTS_HEAD_CACHE_MB is 0),
    the thread that compiles at the loads' lower priority, and the temporary folder made for it
    when MTS_HEAD_CACHE_DIR is unset (removed at shutdown)."""
    budget_mb = settings.head_memory_mb
    cache_mb = settings.head_cache_mb
    if cache_mb is None and budget_mb is not None:
        cache_mb = 10 * budget_mb
    if budget_mb is None or not cache_mb or not runtime.compiles:
        return None, None, None
    made = None
    root = settings.head_cache_dir
    if root is None:
        root = made = Path(tempfile.mkdtemp(prefix="mts-compiled-heads-"))
    thread = ThreadPoolExecutor(1, thread_name_prefix="head-compile", initializer=_background)
    smallest = int(settings.head_cache_min_mb * MIB)
    heads = CompiledHeads(root, int(cache_mb * MIB), runtime, thread, metrics, smallest)
    if made is not None:  # also when the app never starts, or the process exits without stopping
        weakref.finalize(heads, shutil.rmtree, made, True)
    return heads, thread, made


def _background() -> None:
    """Lower the calling thread's CPU priority (Linux: niceness is per thread).

    A head load parses and optimizes a graph and runs a probe; on few cores that competed with
    serving as an equal and raised other tasks' latency (bench/hot_add.py). Best effort: where
    the platform refuses, loads run at normal priority.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICENESS)


def _checked_trunk(repo: ModelRepository, spec: TrunkSpec, precision: str) -> Path:
    """The graph to serve, after checking its bytes against trunk.json.

    The reference graph is checked even when a variant is served: its fingerprint is what every
    head is validated against, so it must be the graph trunk.json describes.
    """
    tokenizer = repo.tokenizer_path.read_bytes()
    if trunk_fingerprint(repo.trunk_model_path.read_bytes(), tokenizer) != spec.fingerprint:
        raise RepositoryError(
            f"{repo.trunk_dir}: model.onnx or tokenizer.json does not match the fingerprint "
            "in trunk.json"
        )
    path = repo.trunk_variant_path(precision)
    variant = spec.variants.get(precision)
    if variant and trunk_fingerprint(path.read_bytes(), tokenizer) != variant.fingerprint:
        raise RepositoryError(f"{path} does not match the {precision} fingerprint in trunk.json")
    if variant and precision == "int8" and EXACT_INTEGER_PRODUCTS not in variant.method:
        log.warning(
            "the int8 trunk was made by %r: its integer products saturate on x86 CPUs without "
            "VNNI, where its answers are wrong; `mts quantize --repo %s` replaces it",
            variant.method,
            repo.root,
        )
    return path


class RepositoryWatcher:
    """Polls the shared repository so that this replica converges on what others changed.

    Each poll lists the heads folder and stats each task's folder (``changed_since``); only the
    tasks whose folder changed are read. Every ``FULL_EVERY`` polls every task is read, in case
    a file system kept a folder's mtime still.
    """

    FULL_EVERY = 30

    def __init__(
        self, registry: HeadRegistry, shadows: Shadows, metrics: Metrics, interval: float
    ) -> None:
        self._registry, self._shadows = registry, shadows
        self._metrics, self._interval = metrics, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repository-watcher", daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        seen: dict[str, int] = {}
        polls = 0
        while not self._stop.wait(self._interval):
            try:
                scanned, changed = self._registry.repo.changed_since(seen)
                tasks = None if polls % self.FULL_EVERY == 0 else changed
                polls += 1
                if tasks is not None and not tasks:
                    continue
                _, dropped = self._registry.sync(tasks)
                self._shadows.sync(tasks)
                seen = scanned
            except Exception:  # a bad poll must not end the watcher
                log.exception("repository poll failed")
                continue
            for task in dropped:
                self._metrics.forget_task(task)
