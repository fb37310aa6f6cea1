"""Invariants 1, 4 and 5: changing one head never changes another's outputs; refusals leave no
trace; what admin acknowledged survives a restart."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from tests.conftest import make_settings
from tests.factories import PROBES, outputs, tree


def test_adding_replacing_and_removing_a_head_leaves_other_outputs_bit_identical(
    client, admin, archives
):
    assert (
        client.post("/admin/heads/topic", content=archives["topic"], headers=admin).status_code
        == 201
    )
    before = outputs(client)
    assert set(before) == {"embed", "topic-zs", "topic"}

    steps = [
        (
            "add",
            lambda: client.post(
                "/admin/heads/sentiment", content=archives["sentiment"], headers=admin
            ),
        ),
        (
            "replace",
            lambda: client.post(
                "/admin/heads/sentiment?replace=true",
                content=archives["sentiment-v2"],
                headers=admin,
            ),
        ),
        ("remove", lambda: client.delete("/admin/heads/sentiment", headers=admin)),
    ]
    for name, step in steps:
        response = step()
        assert response.status_code in (200, 201), (name, response.text)
        after = outputs(client)
        for task, values in before.items():
            assert after[task] == values, f"{task} changed after {name} of another head"


def test_replace_serves_a_new_version_with_different_outputs(client, admin, archives):
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    v1 = client.post("/predict/sentiment", json={"inputs": PROBES}).json()
    r = client.post(
        "/admin/heads/sentiment?replace=true", content=archives["sentiment-v2"], headers=admin
    )
    assert r.json()["version"] == 2
    v2 = client.post("/predict/sentiment", json={"inputs": PROBES}).json()
    assert v2["version"] == 2 and v2["outputs"] != v1["outputs"]


def test_head_from_another_trunk_is_refused_with_409_and_changes_nothing(
    client, admin, archives, repo
):
    before_tasks = client.get("/tasks").json()
    before_outputs = outputs(client)
    before_files = tree(repo)
    r = client.post("/admin/heads/sentiment", content=archives["foreign"], headers=admin)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict" and "trunk" in r.json()["error"]["message"]
    assert client.get("/tasks").json() == before_tasks
    assert outputs(client) == before_outputs
    assert tree(repo) == before_files


def test_duplicate_add_without_replace_is_409(client, admin, archives):
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    r = client.post("/admin/heads/sentiment", content=archives["sentiment-v2"], headers=admin)
    assert r.status_code == 409


def test_acknowledged_heads_survive_a_restart(repo, client, admin, archives):
    client.post("/admin/heads/ner", content=archives["ner"], headers=admin)
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    client.post(
        "/admin/heads/sentiment?replace=true", content=archives["sentiment-v2"], headers=admin
    )
    client.delete("/admin/heads/topic-zs", headers=admin)
    before = outputs(client)
    restarted = TestClient(create_app(make_settings(repo), CollectorRegistry()))
    assert outputs(restarted) == before
    tasks = {t["task"]: t["version"] for t in restarted.get("/tasks").json()["tasks"]}
    assert tasks == {"embed": 1, "ner": 1, "sentiment": 2}
