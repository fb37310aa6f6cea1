"""Admin routes behind a bearer token: hot-add a head (archive or zero-shot labels), remove one,
list and roll back versions, and shadow a candidate version on live traffic before promoting it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hmac
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from multitask_serve.modelrepo.types import (
    TASK_NAME_RE,
    HeadSpec,
    SpecError,
    validate_task_name,
)
from multitask_serve.service.errors import Forbidden, InvalidInput, TooLarge, Unauthorized
from multitask_serve.service.logs import note_tasks
from multitask_serve.service.registry import register_archive
from multitask_serve.service.residency import LoadedHead
from multitask_serve.service.schemas import RollbackRequest, ZeroShotRequest
from multitask_serve.service.state import services

T = TypeVar("T")

# An upload is written to its staging file in batches of about this many bytes, each batch off the
# event loop: the memory an upload holds, whatever its size.
UPLOAD_WRITE_BYTES = 1 << 20


def require_admin(request: Request, authorization: str | None = Header(None)) -> None:
    settings = services(request.app).settings
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
    """Run a head load in the bounded load executor, not on the request threads.

    In a copy of the request's context (run_in_executor passes none), so that the load's log lines
    carry the request id.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await loop.run_in_executor(services(request.app).loads, call)


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def _task(task: str) -> str:
    """The route's task, checked, and named on the request's access line."""
    try:
        validate_task_name(task)
    except SpecError as exc:
        raise InvalidInput(str(exc)) from exc
    # Only a name that is one in full: validate_task_name lets a final newline through.
    note_tasks([task] if TASK_NAME_RE.fullmatch(task) else [])
    return task


def _added(head: LoadedHead, status_code: int = 201, **extra: Any) -> JSONResponse:
    body = {
        "task": head.spec.task,
        "version": head.version,
        "kind": str(head.spec.kind),
        "branch_layer": head.spec.branch_layer,
        "labels": list(head.spec.labels),
        **extra,
    }
    return JSONResponse(body, status_code=status_code)


_ARCHIVE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("application/gzip", "application/octet-stream")
        },
    }
}


@router.post(
    "/heads/{task}",
    summary="Hot-add a head from a .tar.gz archive (the request body)",
    status_code=201,
    openapi_extra=_ARCHIVE_BODY,
)
async def add_head(task: str, request: Request, replace: bool = False) -> JSONResponse:
    registry = services(request.app).registry
    head = await _upload(request, task, functools.partial(registry.add, replace=replace))
    return _added(head)


async def _upload(
    request: Request, task: str, register: Callable[[HeadSpec, bytes], LoadedHead]
) -> LoadedHead:
    """Stage the archive body, unpack and check it off the event loop, then ``register`` it
    (which validates the head against the trunk: fingerprint, signature, probe)."""
    task = _task(task)
    services(request.app).registry.check_selected(task)  # before the body is read
    settings = services(request.app).settings
    max_bytes = settings.max_upload_bytes
    staged = await _stage_upload(request, settings.repository, max_bytes)
    # Whoever takes this closes (and so deletes) the staging file: the load, or this handler if
    # the load never starts (the request was cancelled while the load waited for a thread).
    owner = threading.Lock()

    def load() -> LoadedHead:
        if not owner.acquire(blocking=False):
            raise RuntimeError("the request was cancelled before its head load started")
        # Unpacking decompresses the whole graph (14 MB for a top-2 head: tens of ms of CPU); on
        # the event loop that stalled every other request (bench/hot_add.py), so it runs here.
        with staged:
            return register_archive(staged, task, max_bytes, register)

    try:
        return await _off_path(request, load)
    except BaseException:
        if owner.acquire(blocking=False):
            staged.close()
        raise


async def _stage_upload(request: Request, directory: Path, limit: int) -> IO[bytes]:
    """Stream the request body into a staging file and return it, open at its start.

    At most ``limit`` bytes are accepted: the first chunk past it gets the same 413 as the
    ``BodyLimit`` middleware and nothing more is read. Memory stays at about UPLOAD_WRITE_BYTES
    whatever the body's size. The file is anonymous (created unlinked) and lives in the
    repository's directory, so it takes space on the repository's file system, not in a /tmp that
    may be backed by the pod's memory. Closing it, or the process ending in any way, deletes it,
    so no upload is ever left behind. On any error (too large, client disconnect, cancellation)
    it is closed before this returns.
    """
    staged = await run_in_threadpool(_staging_file, directory)
    try:
        pending: list[bytes] = []
        pending_bytes = received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                # BodyLimit raises at the same byte; this keeps the bound where it is not mounted.
                raise TooLarge(f"request body exceeds {limit} bytes")
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= UPLOAD_WRITE_BYTES:
                await run_in_threadpool(staged.writelines, pending)
                pending, pending_bytes = [], 0
        await run_in_threadpool(_rewind, staged, pending)
    except BaseException:
        staged.close()
        raise
    return staged


def _staging_file(directory: Path) -> IO[bytes]:
    # O_TMPFILE where the file system has it; elsewhere a named file unlinked at once (the prefix
    # makes ModelRepository.sweep remove it if the process dies in between).
    return tempfile.TemporaryFile(dir=directory, prefix=".staging-upload-")


def _rewind(staged: IO[bytes], pending: list[bytes]) -> None:
    staged.writelines(pending)
    staged.flush()
    staged.seek(0)


@router.post(
    "/heads/{task}/zero-shot",
    summary="Hot-add a zero-shot head from label descriptions",
    status_code=201,
)
async def add_zero_shot(task: str, body: ZeroShotRequest, request: Request) -> JSONResponse:
    task = _task(task)
    services(request.app).registry.check_selected(task)
    labels = (
        body.labels if isinstance(body.labels, dict) else {label: label for label in body.labels}
    )
    if len(labels) < 2:
        raise InvalidInput("a zero-shot head needs at least two labels")
    if len(body.labels) != len(labels):
        raise InvalidInput("labels must be unique")
    if any(not label.strip() or not text.strip() for label, text in labels.items()):
        raise InvalidInput("labels and descriptions must be non-empty")
    app = services(request.app)

    def make() -> LoadedHead:
        spec, model = app.engine.zero_shot_head(task, labels)
        return app.registry.add(spec, model, body.replace)

    return _added(await _off_path(request, make))


@router.get("/heads/{task}/versions", summary="Every stored version and which one is served")
async def versions(task: str, request: Request) -> dict[str, Any]:
    app = services(request.app)
    current, stored = await run_in_threadpool(app.registry.versions, _task(task))
    shadow = app.shadows.snapshot().get(task)
    return {
        "task": task,
        "current": current,
        "shadow": shadow.version if shadow is not None else None,
        "versions": [
            {
                "version": s.version,
                "kind": str(s.spec.kind),
                "branch_layer": s.spec.branch_layer,
                "strategy": s.spec.training.get("strategy"),
                "precision": s.spec.precision,
                "labels": list(s.spec.labels),
            }
            for s in stored
        ],
    }


@router.post("/heads/{task}/rollback", summary="Serve an older stored version again")
async def rollback(
    task: str, request: Request, body: RollbackRequest | None = None
) -> JSONResponse:
    registry = services(request.app).registry
    version = body.version if body is not None else None
    head = await _off_path(request, registry.rollback, _task(task), version)
    return _added(head, 200)


@router.delete("/heads/{task}", summary="Stop serving a task and delete its versions")
async def remove_head(task: str, request: Request) -> dict[str, Any]:
    task = _task(task)
    app = services(request.app)
    await run_in_threadpool(app.registry.remove, task)
    app.metrics.forget_task(task)
    return {"task": task, "removed": True}


@router.put("/heads/{task}/pin", summary="Keep a task's head loaded, never evicted")
async def pin(task: str, request: Request) -> dict[str, Any]:
    """Loads the head now if it is not loaded; every replica pins it (the pin is stored in the
    repository, which they poll)."""
    head = await _off_path(request, services(request.app).registry.pin, _task(task))
    return {"task": task, "version": head.version, "pinned": True, "loaded": True}


@router.delete("/heads/{task}/pin", summary="Let a task's head be evicted again")
async def unpin(task: str, request: Request) -> dict[str, Any]:
    registry = services(request.app).registry
    head = await run_in_threadpool(registry.pin, _task(task), False)
    loaded = registry.residency.loaded(task, head.version) is not None
    return {"task": task, "version": head.version, "pinned": False, "loaded": loaded}


# -- shadow: a candidate version on live traffic, answering nobody (service/shadow.py) ----------


@router.post(
    "/heads/{task}/shadow",
    summary="Shadow a candidate head (a .tar.gz archive, the request body) on live traffic",
    openapi_extra=_ARCHIVE_BODY,
)
async def add_shadow(task: str, request: Request, replace: bool = False) -> JSONResponse:
    """Validated like any upload and stored as a new version that is not served. One shadow per
    task: a second is 409 unless ``replace=true``, which replaces it (its report starts over)."""
    shadows = services(request.app).shadows
    head = await _upload(request, task, functools.partial(shadows.add, replace=replace))
    return _added(head, shadow=True)


@router.get(
    "/heads/{task}/shadow", summary="How the shadow candidate compares with the served head"
)
async def shadow_report(task: str, request: Request) -> dict[str, Any]:
    shadows = services(request.app).shadows
    return shadows.report(_task(task))


@router.post("/heads/{task}/shadow/promote", summary="Serve the shadow candidate (atomically)")
async def promote_shadow(task: str, request: Request) -> JSONResponse:
    shadows = services(request.app).shadows
    head = await run_in_threadpool(shadows.promote, _task(task))
    return _added(head, 200)


@router.delete("/heads/{task}/shadow", summary="Discard the shadow candidate")
async def discard_shadow(task: str, request: Request) -> dict[str, Any]:
    shadows = services(request.app).shadows
    head = await run_in_threadpool(shadows.discard, _task(task))
    return {"task": head.spec.task, "discarded": head.version}
