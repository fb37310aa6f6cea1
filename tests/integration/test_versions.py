"""Versions, rollback, and replicas converging on one repository."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from tests.conftest import make_settings
from tests.factories import PROBES, outputs


def test_rollback_serves_the_old_version_bit_identically(client, admin, archives):
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    v1 = client.post("/predict/sentiment", json={"inputs": PROBES}).json()["outputs"]
    client.post(
        "/admin/heads/sentiment?replace=true", content=archives["sentiment-v2"], headers=admin
    )
    listed = client.get("/admin/heads/sentiment/versions", headers=admin).json()
    assert listed["current"] == 2 and [v["version"] for v in listed["versions"]] == [1, 2]
    r = client.post("/admin/heads/sentiment/rollback", headers=admin)
    assert r.status_code == 200 and r.json()["version"] == 1
    after = client.post("/predict/sentiment", json={"inputs": PROBES}).json()
    assert after["version"] == 1 and after["outputs"] == v1
    # Forward again to an explicit version.
    r = client.post("/admin/heads/sentiment/rollback", json={"version": 2}, headers=admin)
    assert r.json()["version"] == 2


def test_rollback_errors(client, admin):
    r = client.post("/admin/heads/embed/rollback", headers=admin)
    assert r.status_code == 409  # version 1 has nothing older
    r = client.post("/admin/heads/embed/rollback", json={"version": 7}, headers=admin)
    assert r.status_code == 404
    assert client.get("/admin/heads/nope/versions", headers=admin).status_code == 404
    assert (
        client.post("/admin/heads/embed/rollback", json={"version": 0}, headers=admin).status_code
        == 422
    )


def test_a_replica_converges_on_adds_rollbacks_and_removals_made_through_another(
    repo, admin, archives
):
    settings = make_settings(repo, repository_poll_seconds=0)
    a = TestClient(create_app(settings, CollectorRegistry()))
    b = TestClient(create_app(settings, CollectorRegistry()))
    sync = b.app.state.services.registry.sync

    a.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    assert sync() == (["sentiment"], [])
    assert outputs(b) == outputs(a)

    a.post("/admin/heads/sentiment?replace=true", content=archives["sentiment-v2"], headers=admin)
    a.post("/admin/heads/sentiment/rollback", headers=admin)
    sync()
    assert b.post("/predict/sentiment", json={"inputs": "x"}).json()["version"] == 1

    a.delete("/admin/heads/sentiment", headers=admin)
    assert sync() == ([], ["sentiment"])
    assert b.post("/predict/sentiment", json={"inputs": "x"}).status_code == 404
    assert sync() == ([], [])  # nothing left to do


def test_removing_a_task_another_replica_removed_first_is_a_404_and_stops_serving_it(
    repo, admin, archives
):
    settings = make_settings(repo, repository_poll_seconds=0)
    a = TestClient(create_app(settings, CollectorRegistry()))
    b = TestClient(create_app(settings, CollectorRegistry()))
    a.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    b.app.state.services.registry.sync()
    assert a.delete("/admin/heads/sentiment", headers=admin).status_code == 200
    # B has not polled since: it still serves the task, but its files are gone.
    r = b.delete("/admin/heads/sentiment", headers=admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert b.post("/predict/sentiment", json={"inputs": "x"}).status_code == 404
