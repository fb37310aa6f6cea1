"""The service's own public routes: predictions, the task list, health, readiness and metrics.

Routes parse, hand the work to the one prediction entry point (service/predict.py ``Predictor``:
task resolution, limits, the micro-batcher, metrics), and shape the answer; errors are raised as
ServiceError and answered in the service's own form (service/schemas.py ``SERVICE``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from multitask_serve.service.listing import ListingQuery
from multitask_serve.service.responses import JSON
from multitask_serve.service.schemas import MultiPredictRequest, PredictRequest
from multitask_serve.service.state import services
from multitask_serve.service.types import JobResult, TaskResult

router = APIRouter()

# Statuses a route answers beyond what its shape implies (service/openapi.py adds the body).
UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {}}


class MetricsResponse(Response):
    """Prometheus' text format, version 0.0.4 (what ``generate_latest`` writes: legacy names, which
    every scraper reads), named so that the OpenAPI document gives its media type."""

    media_type = CONTENT_TYPE_PLAIN_0_0_4


def _body(result: TaskResult, done: JobResult, single: bool) -> dict[str, Any]:
    return {
        "task": result.task,
        "version": result.version,
        "kind": result.kind,
        "outputs": result.outputs[0] if single else result.outputs,
        "truncated": done.truncated[0] if single else done.truncated,
        "windows": done.windows[0] if single else done.windows,
    }


@router.post("/predict/{task}", tags=["predict"], summary="Run one task")
async def predict_task(task: str, body: PredictRequest, request: Request) -> JSON:
    """A text longer than the served length is read whole in overlapping windows (``windows``
    says how many it took) unless ``truncate`` cuts it."""
    predictor = services(request.app).predictor
    done = await predictor.predict(body.inputs, [task], truncate=body.truncate)
    result = done.results[task]
    return JSON(
        _body(result, done, isinstance(body.inputs, str)),
        headers={"X-Head-Version": str(result.version)},
    )


@router.post("/predict", tags=["predict"], summary="Run several tasks with one trunk run")
async def predict_tasks(body: MultiPredictRequest, request: Request) -> JSON:
    tasks = list(dict.fromkeys(body.tasks))
    predictor = services(request.app).predictor
    done = await predictor.predict(body.inputs, tasks, truncate=body.truncate)
    single = isinstance(body.inputs, str)
    return JSON({task: _body(done.results[task], done, single) for task in tasks})


@router.get("/tasks", tags=["tasks"], summary="What is served, and what is still training")
async def tasks(request: Request, query: Annotated[ListingQuery, Depends()]) -> dict[str, Any]:
    """The served tasks, by name, each with whether its head is loaded now (the rest load when
    asked for, within MTS_HEAD_MEMORY_MB) and pinned; under ``training``, the default heads a
    first run still trains (state waiting, training or failed, with epoch and step progress, or
    the error). With ``limit``, ``next`` names the last task listed while more follow: pass it as
    ``after`` for the next page."""
    app = services(request.app)
    trunk = app.engine.trunk_spec
    page = app.registry.page(**dataclasses.asdict(query))
    listed = [
        {
            "task": one.task,
            "kind": str(one.head.spec.kind),
            "version": one.head.version,
            "branch_layer": one.head.spec.branch_layer,
            "labels": list(one.head.spec.labels),
            "loaded": one.loaded,
            "pinned": one.pinned,
        }
        for one in page.heads
    ]
    return {
        "trunk": {
            "base_model": trunk.base_model,
            "fingerprint": trunk.fingerprint,
            "num_layers": trunk.num_layers,
            "hidden_size": trunk.hidden_size,
            "max_length": app.max_length,
        },
        "tasks": listed,
        "next": page.next,
        "training": app.trainer.status() if app.trainer is not None else [],
    }


@router.get(
    "/healthz",
    tags=["health"],
    summary="The process lives and can still serve",
    responses=UNAVAILABLE,
)
async def healthz(request: Request) -> dict[str, str]:
    """Liveness: 503 once the batch worker has stopped, which nothing but a restart repairs.

    A hung worker is readiness' concern (``/readyz``), not this: a long batch must not restart
    the pod.
    """
    services(request.app).predictor.live()
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    summary="A real inference queued through the batch worker",
    responses=UNAVAILABLE,
)
async def readyz(request: Request) -> dict[str, Any]:
    """Ready when the batch worker runs a probe inference, or is busy finishing batches.

    The probe queues like a request (``Predictor.ready``, service/predict.py), so a stopped or
    hung worker fails this within ``readiness_timeout_seconds`` with 503; probes are counted only
    in ``mts_readiness_probes_total``, never in the serving metrics.
    """
    ready = await services(request.app).predictor.ready()
    return {"status": "ready", "heads": ready.heads, "probe": "ran" if ready.ran else "busy"}


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    response_class=MetricsResponse,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> MetricsResponse:
    return MetricsResponse(generate_latest(services(request.app).metrics.registry))
