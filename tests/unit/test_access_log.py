"""One access line per request, written by the observability middleware (service/observability.py)
with the route's template, the tasks the request named (service/logs.py ``note_tasks``), status,
duration and request id, in text and in JSON; and the listener split of MTS_ADMIN_PORT
(service/listeners.py) on a tiny app."""

from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from multitask_serve.service.http_errors import install_handlers
from multitask_serve.service.listeners import ListenerSplit
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
from multitask_serve.service.settings import Settings

ADMIN_PORT = 9000


def tiny_app(admin_port: int | None = None) -> FastAPI:
    """The middlewares as create_app stacks them, around routes that name tasks as the
    prediction path does."""
    app = FastAPI()
    install_handlers(app, SERVICE)

    @app.post("/predict/{task}")
    async def predict(task: str) -> dict[str, str]:
        note_tasks([task, task])  # named twice: listed once
        return {"task": task}

    @app.get("/metrics")
    async def metrics() -> dict[str, str]:
        return {}

    @app.get("/admin/heads/{task}/versions")
    async def versions(task: str) -> dict[str, str]:
        return {}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    if admin_port is not None:
        app.add_middleware(ListenerSplit, admin_port=admin_port, own=SERVICE)
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


def test_the_admin_port_serves_admin_and_metrics_and_the_inference_port_404s_them(caplog):
    caplog.set_level(logging.INFO, "multitask_serve.access")
    app = tiny_app(ADMIN_PORT)
    with (
        TestClient(app, base_url="http://testserver:8000") as inference,
        TestClient(app, base_url=f"http://testserver:{ADMIN_PORT}") as admin,
    ):
        unknown = inference.get("/no/such/path")
        for path in ("/metrics", "/admin/heads/x/versions"):
            hidden = inference.get(path)
            assert (hidden.status_code, hidden.json()) == (404, unknown.json()), path
            assert admin.get(path).status_code == 200, path
        assert admin.post("/predict/x").status_code == 404
        assert inference.post("/predict/x").status_code == 200
        assert inference.get("/healthz").status_code == admin.get("/healthz").status_code == 200
        assert inference.get("/metrics").headers["x-request-id"]  # answered inside RequestId
    # The refusals are logged under the route they name, with no tasks: the app never ran.
    fields = [r.fields for r in access_records(caplog)]  # type: ignore[attr-defined]
    refused = [(f["route"], f["tasks"]) for f in fields if f["status"] == 404]
    assert ("/predict/{task}", []) in refused and ("/metrics", []) in refused


def test_without_an_admin_port_one_listener_serves_everything():
    with TestClient(tiny_app(None), base_url=f"http://testserver:{ADMIN_PORT}") as client:
        assert client.get("/metrics").status_code == 200
        assert client.post("/predict/x").status_code == 200


def test_the_admin_port_must_be_another_port_in_range():
    assert Settings(port=8000, admin_port=9000).admin_port == 9000
    assert Settings(port=8000).admin_port is None
    for wrong in (8000, 0, 70000):
        with pytest.raises(ValueError, match=r"MTS_ADMIN_PORT|greater|less"):
            Settings(port=8000, admin_port=wrong)
