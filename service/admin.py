"""Admin routes behind a bearer token: hot-add a head (archive or zero-shot labels), remove one."""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.engine import Engine
from service.errors import Forbidden, InvalidInput, Unauthorized
from service.registry import HeadRegistry, LoadedHead
from service.schemas import RollbackRequest, ZeroShotRequest
from service.settings import Settings
from spec.archive import ArchiveError, unpack_head
from spec.types import SpecError, validate_task_name

T = TypeVar("T")


def require_admin(request: Request, authorization: str | None = Header(None)) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        if settings.allow_unauthenticated_admin:
            return
        raise Forbidden("admin endpoints are disabled: start the service with MTS_ADMIN_TOKEN set")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("admin endpoints need an 'Authorization: Bearer <token>' header")
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("invalid admin token")


async def _off_path(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run a head load in the bounded load executor, not on the request threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app.state.loads, functools.partial(fn, *args))


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def _task(task: str) -> str:
    try:
        return validate_task_name(task)
    except SpecError as exc:
        raise InvalidInput(str(exc)) from exc


def _added(head: LoadedHead) -> JSONResponse:
    body = {
        "task": head.spec.task,
        "version": head.version,
        "kind": str(head.spec.kind),
        "branch_layer": head.spec.branch_layer,
        "labels": list(head.spec.labels),
    }
    return JSONResponse(body, status_code=201)


@router.post(
    "/heads/{task}",
    summary="Hot-add a head from a .tar.gz archive (the request body)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def add_head(task: str, request: Request, replace: bool = False) -> JSONResponse:
    task = _task(task)
    data = await request.body()
    registry: HeadRegistry = request.app.state.registry
    max_bytes = request.app.state.settings.max_upload_bytes

    def load() -> LoadedHead:
        # Unpacking decompresses the whole graph (14 MB for a top-2 head: tens of ms of CPU); on
        # the event loop that stalled every other request (bench/hot_add.py), so it runs here.
        try:
            spec, model = unpack_head(data, max_bytes)
        except ArchiveError as exc:
            raise InvalidInput(f"head archive refused: {exc}") from exc
        if spec.task != task:
            raise InvalidInput(f"the archive is a head for {spec.task!r}, not {task!r}")
        return registry.add(spec, model, replace)

    return _added(await _off_path(request, load))


@router.post("/heads/{task}/zero-shot", summary="Hot-add a zero-shot head from label descriptions")
async def add_zero_shot(task: str, body: ZeroShotRequest, request: Request) -> JSONResponse:
    task = _task(task)
    labels = (
        body.labels if isinstance(body.labels, dict) else {label: label for label in body.labels}
    )
    if len(labels) < 2:
        raise InvalidInput("a zero-shot head needs at least two labels")
    if len(body.labels) != len(labels):
        raise InvalidInput("labels must be unique")
    if any(not label.strip() or not text.strip() for label, text in labels.items()):
        raise InvalidInput("labels and descriptions must be non-empty")
    engine: Engine = request.app.state.engine
    registry: HeadRegistry = request.app.state.registry

    def make() -> LoadedHead:
        spec, model = engine.zero_shot_head(task, labels)
        return registry.add(spec, model, body.replace)

    return _added(await _off_path(request, make))


@router.get("/heads/{task}/versions", summary="Every stored version and which one is served")
async def versions(task: str, request: Request) -> dict[str, Any]:
    registry: HeadRegistry = request.app.state.registry
    current, stored = await run_in_threadpool(registry.versions, _task(task))
    return {
        "task": task,
        "current": current,
        "versions": [
            {
                "version": s.version,
                "kind": str(s.spec.kind),
                "branch_layer": s.spec.branch_layer,
                "strategy": s.spec.training.get("strategy"),
                "labels": list(s.spec.labels),
            }
            for s in stored
        ],
    }


@router.post("/heads/{task}/rollback", summary="Serve an older stored version again")
async def rollback(
    task: str, request: Request, body: RollbackRequest | None = None
) -> JSONResponse:
    registry: HeadRegistry = request.app.state.registry
    version = body.version if body is not None else None
    head = await _off_path(request, registry.rollback, _task(task), version)
    response = _added(head)
    response.status_code = 200
    return response


@router.delete("/heads/{task}", summary="Stop serving a task and delete its versions")
async def remove_head(task: str, request: Request) -> dict[str, Any]:
    task = _task(task)
    registry: HeadRegistry = request.app.state.registry
    await run_in_threadpool(registry.remove, task)
    request.app.state.metrics.forget_task(task)
    return {"task": task, "removed": True}
