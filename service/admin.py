"""Admin routes behind a bearer token: hot-add a head (archive or zero-shot labels), remove one."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.engine import Engine
from service.errors import Forbidden, InvalidInput, Unauthorized
from service.registry import HeadRegistry, LoadedHead
from service.schemas import ZeroShotRequest
from service.settings import Settings
from spec.archive import ArchiveError, unpack_head
from spec.types import SpecError, validate_task_name


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
    try:
        spec, model = unpack_head(data, request.app.state.settings.max_upload_bytes)
    except ArchiveError as exc:
        raise InvalidInput(f"head archive refused: {exc}") from exc
    if spec.task != task:
        raise InvalidInput(f"the archive is a head for {spec.task!r}, not {task!r}")
    registry: HeadRegistry = request.app.state.registry
    head = await run_in_threadpool(registry.add, spec, model, replace)
    return _added(head)


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

    return _added(await run_in_threadpool(make))


@router.delete("/heads/{task}", summary="Stop serving a task and delete its versions")
async def remove_head(task: str, request: Request) -> dict[str, Any]:
    task = _task(task)
    registry: HeadRegistry = request.app.state.registry
    await run_in_threadpool(registry.remove, task)
    request.app.state.metrics.forget_task(task)
    return {"task": task, "removed": True}
