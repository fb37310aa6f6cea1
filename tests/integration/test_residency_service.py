"""Every stored head served, at most MTS_HEAD_MEMORY_MB of them loaded: a service whose budget
holds one head answers every task, in any order and concurrently, exactly as one with every head
loaded; pinned heads stay loaded; /tasks says which are loaded and pages."""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.app import create_app
from tests.conftest import make_settings
from tests.integration.residency import (
    ONE_HEAD_MB,
    add_trained_heads,
    answers,
    sample,
)


@pytest.fixture
def repo(repo, archives):
    return add_trained_heads(repo, archives)


def test_a_budget_of_one_head_answers_every_task_as_every_head_loaded_does(repo):
    everything = create_app(make_settings(repo), CollectorRegistry())
    bounded = create_app(make_settings(repo, head_memory_mb=ONE_HEAD_MB), CollectorRegistry())
    with TestClient(everything) as full, TestClient(bounded) as small:
        tasks = [t["task"] for t in full.get("/tasks").json()["tasks"]]
        assert len(tasks) >= 4
        listed = small.get("/tasks").json()["tasks"]
        assert [t["task"] for t in listed] == tasks and not any(t["loaded"] for t in listed)
        expected = {task: answers(full, task) for task in tasks}
        for _ in range(2):  # each task evicted by the next and loaded again
            for task in tasks:
                assert answers(small, task) == expected[task], task
        assert len(small.get("/tasks", params={"loaded": True}).json()["tasks"]) == 1
        with ThreadPoolExecutor(8) as pool:
            calls = [tasks[i % len(tasks)] for i in range(4 * len(tasks))]
            for task, answer in zip(
                calls, pool.map(lambda t: answers(small, t), calls), strict=True
            ):
                assert answer == expected[task], task
        misses = sample(small, "mts_head_lookups_total", {"result": "miss"})
        assert misses >= 2 * len(tasks)
        assert sample(small, "mts_head_evictions_total") >= 2 * len(tasks) - 1
        assert sample(small, "mts_head_cold_load_duration_seconds_count") >= 2 * len(tasks)
        assert sample(small, "mts_heads_served") == len(tasks)
        assert sample(small, "mts_head_loaded_bytes") <= ONE_HEAD_MB * 2**20
        # readiness probes through a loaded head (or the trunk alone)
        assert small.get("/readyz").status_code == 200


def test_pinned_heads_are_loaded_at_start_and_never_evicted(repo, admin):
    app = create_app(
        make_settings(repo, head_memory_mb=ONE_HEAD_MB, pinned_tasks=["topic"]),
        CollectorRegistry(),
    )
    with TestClient(app) as client:
        listed = {t["task"]: t for t in client.get("/tasks").json()["tasks"]}
        assert listed["topic"]["loaded"] and listed["topic"]["pinned"]
        assert [t for t, v in listed.items() if v["loaded"]] == ["topic"]
        r = client.put("/admin/heads/embed/pin", headers=admin)
        assert r.status_code == 200 and r.json()["loaded"] and r.json()["pinned"]
        for task in listed:
            answers(client, task)
        loaded = {t["task"] for t in client.get("/tasks", params={"loaded": True}).json()["tasks"]}
        assert {"topic", "embed"} <= loaded
        # settings' pins stay; the admin API's are stored in the repository
        assert client.delete("/admin/heads/topic/pin", headers=admin).status_code == 409
        assert (repo / "heads" / "embed" / "pinned").is_file()
        r = client.delete("/admin/heads/embed/pin", headers=admin)
        assert r.status_code == 200 and not r.json()["pinned"]
        assert not (repo / "heads" / "embed" / "pinned").exists()
        assert client.put("/admin/heads/nope/pin", headers=admin).status_code == 404


def test_tasks_filter_by_kind_and_loaded_and_page(repo):
    app = create_app(make_settings(repo, head_memory_mb=ONE_HEAD_MB), CollectorRegistry())
    with TestClient(app) as client:
        every = [t["task"] for t in client.get("/tasks").json()["tasks"]]
        pages, after = [], None
        while True:
            params: dict[str, Any] = {"limit": 2} | ({"after": after} if after else {})
            body = client.get("/tasks", params=params).json()
            pages.append([t["task"] for t in body["tasks"]])
            after = body["next"]
            if after is None:
                break
        assert [t for page in pages for t in page] == every and all(len(p) <= 2 for p in pages)
        embeddings = client.get("/tasks", params={"kind": "embedding"}).json()["tasks"]
        assert embeddings and all(t["kind"] == "embedding" for t in embeddings)
        answers(client, every[0])
        loaded = client.get("/tasks", params={"loaded": True}).json()["tasks"]
        assert [t["task"] for t in loaded] == [every[0]]
        assert client.get("/tasks", params={"kind": "nope"}).status_code == 422
        assert client.get("/tasks", params={"limit": 0}).status_code == 422


def test_a_head_removed_behind_the_replica_answers_404_and_a_broken_one_503(repo):
    app = create_app(
        make_settings(repo, head_memory_mb=ONE_HEAD_MB, repository_poll_seconds=0),
        CollectorRegistry(),
    )
    with TestClient(app) as client:
        # another replica removed the task; this one has not polled: the task is gone here too
        shutil.rmtree(repo / "heads" / "topic")
        r = client.post("/predict/topic", json={"inputs": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
        (repo / "heads" / "ner" / "1" / "head.onnx").write_bytes(b"not a graph")
        r = client.post("/predict/ner", json={"inputs": "x"})
        assert r.status_code == 503 and "could not be loaded" in r.text, r.text
        assert answers(client, "sentiment")  # the others are untouched


def test_oip_index_and_openai_models_filter_and_page_as_tasks_does(repo):
    store = ModelRepository(repo)
    embed = store.read_head("embed")
    for name in ("embed-b", "embed-c"):
        store.add_head(dataclasses.replace(embed.spec, task=name), embed.model_path.read_bytes())
    app = create_app(make_settings(repo, head_memory_mb=ONE_HEAD_MB), CollectorRegistry())
    with TestClient(app) as client:
        every = [t["task"] for t in client.get("/tasks").json()["tasks"]]
        index = client.post("/v2/repository/index")
        assert index.status_code == 200 and "link" not in index.headers
        assert [m["name"] for m in index.json()] == every
        assert all(m["state"] == "READY" and not m["parameters"]["loaded"] for m in index.json())
        names, url = [], "/v2/repository/index?limit=2"
        while url:  # the Link header's next page, as a client follows it
            page = client.post(url, json={"ready": True})
            names += [m["name"] for m in page.json()]
            url = page.links.get("next", {}).get("url")
        assert names == every
        answers(client, "embed-b")
        loaded = client.post("/v2/repository/index", params={"loaded": True}).json()
        assert [(m["name"], m["parameters"]["loaded"]) for m in loaded] == [("embed-b", True)]
        taggers = client.post("/v2/repository/index", params={"kind": "token-classification"})
        assert [m["name"] for m in taggers.json()] == ["ner"]
        for bad in (b"[1]", b"{", b'{"ready": "yes"}'):
            refused = client.post("/v2/repository/index", content=bad)
            assert refused.status_code == 400 and "error" in refused.json(), bad
        assert client.post("/v2/repository/index", params={"limit": 0}).status_code == 400

        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["embed", "embed-b", "embed-c"]
        assert models["has_more"] is False and models["last_id"] == "embed-c"
        first = client.get("/v1/models", params={"limit": 2}).json()
        assert [m["id"] for m in first["data"]] == ["embed", "embed-b"] and first["has_more"]
        rest = client.get("/v1/models", params={"limit": 2, "after": first["last_id"]}).json()
        assert [m["id"] for m in rest["data"]] == ["embed-c"] and not rest["has_more"]
        loaded_models = client.get("/v1/models", params={"loaded": True}).json()["data"]
        assert [m["id"] for m in loaded_models] == ["embed-b"]
        assert client.get("/v1/models", params={"limit": 0}).status_code == 400
