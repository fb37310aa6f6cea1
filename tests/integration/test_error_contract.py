"""The error contract: JSON ``{"error": {"code", "message"}}`` with the right status, one test
per status code, and refusals that leave the repository untouched."""

from __future__ import annotations

import io
import tarfile

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.archive import pack_head, unpack_head
from multitask_serve.service.app import create_app
from multitask_serve.service.settings import Settings
from tests.conftest import make_settings
from tests.factories import tree


def error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    return body["error"]["message"]


def test_401_without_or_with_a_wrong_admin_token(client, archives):
    r = client.post("/admin/heads/x", content=archives["sentiment"])
    error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.delete("/admin/heads/embed", headers={"Authorization": "Bearer nope"})
    error(r, 401, "unauthorized")
    assert client.get("/tasks").json()["tasks"][0]["task"] == "embed"


def test_403_when_admin_is_disabled(repo):
    settings = make_settings(repo)
    settings.admin_token = None
    client = TestClient(create_app(settings, CollectorRegistry()))
    assert "MTS_ADMIN_TOKEN" in error(client.delete("/admin/heads/embed"), 403, "forbidden")


def test_403_when_the_admin_token_is_empty(repo, monkeypatch):
    monkeypatch.setenv("MTS_ADMIN_TOKEN", "")  # a Kubernetes Secret left blank
    client = TestClient(create_app(Settings(repository=repo), CollectorRegistry()))
    headers = {"Authorization": "Bearer "}
    error(client.delete("/admin/heads/embed", headers=headers), 403, "forbidden")


def test_404_unknown_task_and_unknown_route(client, admin):
    assert "nope" in error(client.post("/predict/nope", json={"inputs": "x"}), 404, "not_found")
    error(
        client.post("/predict", json={"inputs": "x", "tasks": ["embed", "nope"]}), 404, "not_found"
    )
    error(client.get("/nowhere"), 404, "not_found")
    error(client.delete("/admin/heads/nope", headers=admin), 404, "not_found")


def test_405_wrong_method(client):
    error(client.get("/predict/embed"), 405, "method_not_allowed")


def test_413_too_many_texts_and_oversized_bodies(repo):
    client = TestClient(
        create_app(make_settings(repo, max_batch_texts=4, max_body_bytes=2000), CollectorRegistry())
    )
    error(client.post("/predict/embed", json={"inputs": ["a"] * 5}), 413, "too_large")
    error(client.post("/predict/embed", json={"inputs": "a" * 5000}), 413, "too_large")

    def chunked():  # no Content-Length: the limit applies while the body streams in
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"a" * 500
        yield b'"}'

    r = client.post(
        "/predict/embed", content=chunked(), headers={"content-type": "application/json"}
    )
    error(r, 413, "too_large")


def test_422_invalid_inputs(client):
    for body in [
        {"inputs": []},
        {"inputs": [1, 2]},
        {"inputs": None},
        {},
        {"inputs": "x", "extra": 1},
        {"inputs": {"a": 1}},
    ]:
        error(client.post("/predict/embed", json=body), 422, "invalid_input")
    r = client.post(
        "/predict/embed", content=b"{not json", headers={"content-type": "application/json"}
    )
    error(r, 422, "invalid_input")
    error(client.post("/predict", json={"inputs": "x", "tasks": []}), 422, "invalid_input")


def test_422_bad_archives_change_nothing(client, admin, archives, repo):
    spec, model = unpack_head(archives["sentiment"], 1 << 30)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../head.onnx")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    cases = {
        "not an archive": b"definitely not a tarball",
        "path traversal": evil.getvalue(),
        "bytes that are not ONNX": pack_head(spec, b"not onnx"),
        "label count not matching the graph": pack_head(
            type(spec)(**{**spec.__dict__, "labels": ("a", "b")}), model
        ),
        "task name differs from the URL": pack_head(
            type(spec)(**{**spec.__dict__, "task": "other"}), model
        ),
        "branch tap out of range": pack_head(
            type(spec)(**{**spec.__dict__, "branch_layer": 99}), model
        ),
    }
    before = tree(repo)
    for name, data in cases.items():
        r = client.post("/admin/heads/sentiment", content=data, headers=admin)
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["code"] == "invalid_input", name
    assert tree(repo) == before
    assert [t["task"] for t in client.get("/tasks").json()["tasks"]] == ["embed", "topic-zs"]


def test_422_bad_zero_shot_requests(client, admin):
    for body in [
        {"labels": ["only-one"]},
        {"labels": {}},
        {"labels": {"a": " ", "b": "x"}},
        {"labels": ["a", "a"]},
        {"labels": "nope"},
    ]:
        error(
            client.post("/admin/heads/zs/zero-shot", json=body, headers=admin), 422, "invalid_input"
        )
    error(
        client.post("/admin/heads/Bad Name!/zero-shot", json={"labels": ["a", "b"]}, headers=admin),
        422,
        "invalid_input",
    )


def test_409_conflicts(client, admin, archives):
    error(
        client.post("/admin/heads/sentiment", content=archives["foreign"], headers=admin),
        409,
        "conflict",
    )
    body = {"labels": ["a", "b"]}
    error(client.post("/admin/heads/topic-zs/zero-shot", json=body, headers=admin), 409, "conflict")


def test_429_with_retry_after_when_the_queue_is_full(repo):
    with TestClient(create_app(make_settings(repo, max_queued_texts=0), CollectorRegistry())) as c:
        r = c.post("/predict/embed", json={"inputs": "x"})
        error(r, 429, "overloaded")
        assert r.headers["retry-after"] == "1"


def test_framework_errors_follow_the_contract_with_a_named_code():
    # FastAPI raises its own HTTPExceptions (a 400 for a body it cannot parse, for one); each
    # must come out as {"error": {"code", "message"}} with a code a client can switch on.
    from fastapi import FastAPI, HTTPException

    from multitask_serve.service.http_errors import install_handlers
    from multitask_serve.service.schemas import SERVICE

    app = FastAPI()
    install_handlers(app, SERVICE)

    @app.get("/raise/{status}")
    def _raise(status: int) -> None:
        raise HTTPException(status, "framework said no")

    with TestClient(app) as c:
        for status, code in ((400, "invalid_input"), (405, "method_not_allowed"), (418, None)):
            r = c.get(f"/raise/{status}")
            assert r.status_code == status
            assert r.json()["error"] == {
                "code": code or "http_error",
                "message": "framework said no",
            }
