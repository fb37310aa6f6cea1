"""One access line per request, written by the observability middleware (service/observability.py)
with the route's template, the tasks the request named (service/logs.py ``note_tasks``), status,
duration and request id, in text and in JSON, on a tiny app."""

from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from multitask_serve.service.http_errors import install_handlers
from multitask_serve.service.logs import (
    MAX_NOTED_TASKS,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    note_tasks,
    request_tasks,
)
from multitask_serve.service.observability import RequestCounter, RequestId
from multitask_serve.service.schemas import SERVICE


def tiny_app() -> FastAPI:
    """The middlewares as create_app stacks them, around routes that name tasks as the
    prediction path does."""
    app = FastAPI()
    install_handlers(app, SERVICE)

    @app.post("/predict/{task}")
    async def predict(task: str) -> dict[str, str]:
        note_tasks([task, task])  # named twice: listed once
        return {"task": task}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    counter = Counter("requests", "r", ["route", "method", "status"], registry=CollectorRegistry())
    app.add_middleware(RequestCounter, counter=counter, routes=app.router.routes)
    app.add_middleware(RequestId)
    return app


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "multitask_serve.access"]


def test_each_request_has_one_access_line_with_route_tasks_status_duration_and_id(caplog):
    caplog.set_level(logging.INFO, "multitask_serve.access")
    caplog.handler.addFilter(RequestIdFilter())  # as configure's handler: the id at emit time
    with TestClient(tiny_app(), raise_server_exceptions=False) as client:
        client.post("/predict/sentiment", headers={"X-Request-ID": "r-1"})
        client.get("/no/such/path", headers={"X-Request-ID": "r-2"})
        client.get("/boom", headers={"X-Request-ID": "r-3"})
    records = access_records(caplog)
    fields = [dict(r.fields) for r in records]  # type: ignore[attr-defined]
    durations = [f.pop("duration_ms") for f in fields]
    assert fields == [
        {"method": "POST", "route": "/predict/{task}", "status": 200, "tasks": ["sentiment"]},
        {"method": "GET", "route": "other", "status": 404, "tasks": []},
        {"method": "GET", "route": "/boom", "status": 500, "tasks": []},
    ]
    assert all(0 < ms < 60_000 for ms in durations)
    assert [r.request_id for r in records] == ["r-1", "r-2", "r-3"]  # type: ignore[attr-defined]

    text = TextFormatter().format(records[0])
    assert re.search(
        r" INFO multitask_serve\.access \[r-1\]: POST /predict/\{task\} 200 \d+\.\d ms "
        r"tasks=sentiment$",
        text,
    ), text
    assert re.search(r": GET other 404 \d+\.\d ms tasks=-$", TextFormatter().format(records[1]))
    entry = json.loads(JsonFormatter().format(records[0]))
    assert {k: entry[k] for k in ("request_id", "method", "route", "status", "tasks")} == {
        "request_id": "r-1",
        "method": "POST",
        "route": "/predict/{task}",
        "status": 200,
        "tasks": ["sentiment"],
    }
    assert entry["duration_ms"] == records[0].fields["duration_ms"]  # type: ignore[attr-defined]
    assert entry["logger"] == "multitask_serve.access"


def test_tasks_are_noted_only_inside_a_request_and_at_most_a_bounded_number():
    note_tasks(["outside"])  # no request: nothing to note, no error
    assert request_tasks.get() is None
    noted: list[str] = []
    token = request_tasks.set(noted)
    try:
        note_tasks(f"t{i}" for i in range(MAX_NOTED_TASKS + 5))
    finally:
        request_tasks.reset(token)
    assert noted == [f"t{i}" for i in range(MAX_NOTED_TASKS)]
