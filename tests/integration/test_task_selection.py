"""MTS_TASKS: a replica set serves only the tasks its selector names or matches (a static shard
of a fleet sharing one repository). Every other task is absent from every listing and route,
refused by the admin API with nothing stored, and ignored by the repository sync; the tasks it
does serve answer exactly as a replica serving everything answers them."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from multitask_serve.modelrepo.archive import unpack_head
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.app import create_app
from tests.conftest import make_settings
from tests.integration.residency import ONE_HEAD_MB, add_trained_heads, answers

SHARD = ["topic*", "embed"]
SELECTED = ["embed", "topic", "topic-zs"]
LEFT_OUT = ["ner", "sentiment"]


@pytest.fixture
def repo(repo, archives):
    return add_trained_heads(repo, archives)


def listed(client: TestClient) -> list[str]:
    return [t["task"] for t in client.get("/tasks").json()["tasks"]]


def test_a_shard_serves_its_tasks_as_a_replica_serving_every_task_does(repo):
    everything = create_app(make_settings(repo), CollectorRegistry())
    shard = create_app(make_settings(repo, tasks=SHARD), CollectorRegistry())
    with TestClient(everything) as full, TestClient(shard) as client:
        assert sorted(listed(full)) == sorted(SELECTED + LEFT_OUT)
        assert listed(client) == SELECTED
        for task in SELECTED:
            assert answers(client, task) == answers(full, task), task
        index = client.post("/v2/repository/index", json={}).json()
        assert [m["name"] for m in index] == SELECTED
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["embed"]
        texts = {"inputs": ["the bank rates fell"]}
        for task in LEFT_OUT:
            r = client.post(f"/predict/{task}", json=texts)
            assert r.status_code == 404, r.text
            assert f"task {task!r} is not served by this replica set" in r.text
            assert "MTS_TASKS=topic*,embed" in r.text
            assert client.get(f"/v2/models/{task}/ready").status_code == 404
            assert client.post(f"/{task}/predict", json=texts).status_code == 404
        # a multi-task request naming a task served elsewhere is refused whole
        r = client.post("/predict", json={**texts, "tasks": ["topic", "sentiment"]})
        assert r.status_code == 404 and "sentiment" in r.text
        # a task no replica set serves is plainly unknown (the selector would take it)
        r = client.post("/predict/topic-new", json=texts)
        assert r.status_code == 404 and "unknown task 'topic-new'" in r.text


def test_the_admin_api_refuses_tasks_left_out_and_stores_nothing(repo, archives, admin):
    app = create_app(make_settings(repo, tasks=SHARD), CollectorRegistry())
    store = ModelRepository(repo)
    before = store.tasks()
    with TestClient(app) as client:
        r = client.post("/admin/heads/mood/zero-shot", json={"labels": ["a", "b"]}, headers=admin)
        assert r.status_code == 409 and "MTS_TASKS=topic*,embed" in r.text, r.text
        r = client.post("/admin/heads/sentiment-2", content=archives["sentiment"], headers=admin)
        assert r.status_code == 409, r.text
        for task in LEFT_OUT:
            assert client.put(f"/admin/heads/{task}/pin", headers=admin).status_code == 404
            assert client.delete(f"/admin/heads/{task}", headers=admin).status_code == 404
            assert client.get(f"/admin/heads/{task}/versions", headers=admin).status_code == 404
            r = client.post(f"/admin/heads/{task}/rollback", headers=admin)
            assert r.status_code == 404, r.text
        assert store.tasks() == before and store.pinned() == set()
        assert listed(client) == SELECTED
        # a task the selector takes is added and served
        labels = {"labels": ["a", "b"]}
        r = client.post("/admin/heads/topic-new/zero-shot", json=labels, headers=admin)
        assert r.status_code == 201, r.text
        assert "topic-new" in listed(client)


def test_the_repository_sync_serves_only_selected_tasks_others_add(repo, archives):
    app = create_app(
        make_settings(repo, tasks=SHARD, repository_poll_seconds=0), CollectorRegistry()
    )
    store = ModelRepository(repo)
    spec, model = unpack_head(archives["topic"], 1 << 30)
    with TestClient(app) as client:
        registry = app.state.services.registry
        for name in ("topic-b", "other"):  # as another shard's replica stores them
            store.add_head(dataclasses.replace(spec, task=name), model)
        assert registry.sync(["topic-b", "other"]) == (["topic-b"], [])
        store.add_head(dataclasses.replace(spec, task="topic-c"), model)
        store.add_head(dataclasses.replace(spec, task="other-2"), model)
        changed, dropped = registry.sync()
        assert changed == ["topic-c"] and dropped == []
        assert listed(client) == sorted([*SELECTED, "topic-b", "topic-c"])
        store.remove_task("other")
        assert registry.sync(["other"]) == ([], [])


def test_a_shard_with_a_budget_loads_only_its_own_heads(repo):
    app = create_app(
        make_settings(repo, tasks=["ner", "sentiment"], head_memory_mb=ONE_HEAD_MB),
        CollectorRegistry(),
    )
    with TestClient(app) as client:
        assert listed(client) == ["ner", "sentiment"]
        for task in ("ner", "sentiment", "ner"):
            answers(client, task)
        loaded = client.get("/tasks", params={"loaded": True}).json()["tasks"]
        assert [t["task"] for t in loaded] == ["ner"]


def test_settings_refuse_pins_the_selector_leaves_out_and_bad_patterns(repo):
    with pytest.raises(ValidationError, match="MTS_PINNED_TASKS names sentiment"):
        make_settings(repo, tasks=["topic*"], pinned_tasks=["sentiment"])
    with pytest.raises(ValidationError, match="invalid task pattern"):
        make_settings(repo, tasks=["topic/*"])
    assert make_settings(repo, tasks=["topic*"], pinned_tasks=["topic-zs"]).selector("topic")
