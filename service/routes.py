"""Public routes: predictions, the task list, health, readiness and metrics.

Routes parse, resolve tasks against one registry snapshot, submit the work to the micro-batcher,
and shape the answer; errors are raised as ServiceError and become JSON in one handler
(service/http_errors.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from multitask_serve.service.batcher import Batcher
from multitask_serve.service.engine import PROBE_TEXT, Engine
from multitask_serve.service.errors import InvalidInput, TooLarge, Unavailable
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.registry import HeadRegistry, LoadedHead
from multitask_serve.service.schemas import MultiPredictRequest, PredictRequest
from multitask_serve.service.settings import Settings
from multitask_serve.service.types import TaskResult

router = APIRouter()


def request_texts(inputs: str | list[str], settings: Settings) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        raise InvalidInput("inputs is an empty list; send a text or a list of texts")
    if len(texts) > settings.max_batch_texts:
        raise TooLarge(
            f"{len(texts)} texts in one request; the limit is {settings.max_batch_texts}"
        )
    for i, text in enumerate(texts):
        # JSON may escape lone UTF-16 surrogates ("\ud800"); they are not text, and the
        # tokenizer would fail on them inside a micro-batch that other requests share.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"inputs[{i}] is not valid Unicode ({exc.reason} at character {exc.start})"
            ) from None
    return texts


def _body(result: TaskResult, truncated: list[bool], single: bool) -> dict[str, Any]:
    return {
        "task": result.task,
        "version": result.version,
        "kind": result.kind,
        "outputs": result.outputs[0] if single else result.outputs,
        "truncated": truncated[0] if single else truncated,
    }


async def run_batched(
    request: Request, heads: dict[str, LoadedHead], texts: list[str]
) -> tuple[dict[str, TaskResult], list[bool]]:
    """Every prediction route's path: the micro-batcher, then per-task metrics."""
    batcher: Batcher = request.app.state.batcher
    metrics: Metrics = request.app.state.metrics
    started = time.perf_counter()
    try:
        with metrics.in_flight.track_inprogress():
            done = await batcher.submit(heads, texts)
    except Exception:
        for task in heads:
            metrics.requests.labels(task, "error").inc()
        raise
    elapsed = time.perf_counter() - started
    for task in heads:
        metrics.request_seconds.labels(task).observe(elapsed)
        metrics.requests.labels(task, "ok").inc()
    return done.results, done.truncated


@router.post("/predict/{task}", tags=["predict"], summary="Run one task")
async def predict_task(task: str, body: PredictRequest, request: Request) -> JSONResponse:
    texts = request_texts(body.inputs, request.app.state.settings)
    heads = request.app.state.registry.resolve([task])
    results, truncated = await run_batched(request, heads, texts)
    result = results[task]
    return JSONResponse(
        _body(result, truncated, isinstance(body.inputs, str)),
        headers={"X-Head-Version": str(result.version)},
    )


@router.post("/predict", tags=["predict"], summary="Run several tasks with one trunk run")
async def predict_tasks(body: MultiPredictRequest, request: Request) -> dict[str, Any]:
    texts = request_texts(body.inputs, request.app.state.settings)
    tasks = list(dict.fromkeys(body.tasks))
    heads = request.app.state.registry.resolve(tasks)
    results, truncated = await run_batched(request, heads, texts)
    single = isinstance(body.inputs, str)
    return {task: _body(results[task], truncated, single) for task in tasks}


@router.get("/tasks", tags=["tasks"], summary="What is served")
async def tasks(request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    registry: HeadRegistry = request.app.state.registry
    trunk = engine.trunk_spec
    return {
        "trunk": {
            "base_model": trunk.base_model,
            "fingerprint": trunk.fingerprint,
            "num_layers": trunk.num_layers,
            "hidden_size": trunk.hidden_size,
            "max_length": request.app.state.max_length,
        },
        "tasks": [
            {
                "task": task,
                "kind": str(head.spec.kind),
                "version": head.version,
                "branch_layer": head.spec.branch_layer,
                "labels": list(head.spec.labels),
            }
            for task, head in sorted(registry.snapshot().items())
        ],
    }


@router.get("/healthz", tags=["health"], summary="The process lives and can still serve")
async def healthz(request: Request) -> dict[str, str]:
    """Liveness: 503 once the batch worker has stopped, which nothing but a restart repairs.

    A hung worker is readiness' concern (``/readyz``), not this: a long batch must not restart
    the pod.
    """
    failure = request.app.state.batcher.failure
    if failure is not None:
        raise Unavailable(failure)
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="A real inference queued through the batch worker")
async def readyz(request: Request) -> dict[str, Any]:
    """Ready when the batch worker runs a probe inference, or is busy finishing batches.

    The probe queues like a request (service/batcher.py ``Batcher.check``), so a stopped or hung
    worker fails this within ``readiness_timeout_seconds``; probes are counted only in
    ``mts_readiness_probes_total``, never in the serving metrics.
    """
    if request.app.state.draining.is_set():
        raise Unavailable("shutting down: finishing in-flight requests")
    settings: Settings = request.app.state.settings
    batcher: Batcher = request.app.state.batcher
    engine: Engine = request.app.state.probe_engine
    heads = request.app.state.registry.snapshot()
    probe: Callable[[], object]
    if heads:
        task = sorted(heads)[0]
        probe = functools.partial(engine.predict, {task: heads[task]}, [PROBE_TEXT])
    else:
        probe = functools.partial(engine.embed, [PROBE_TEXT])
    try:
        ran = await batcher.check(probe, settings.readiness_timeout_seconds)
    except Unavailable:
        raise
    except Exception as exc:
        raise Unavailable(f"probe inference failed: {exc}") from exc
    return {"status": "ready", "heads": len(heads), "probe": "ran" if ran else "busy"}


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
