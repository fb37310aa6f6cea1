"""The HTTP API in process: wire format per kind, one trunk run per call, metrics, readiness."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from multitask_serve.service.app import LOAD_NICENESS
from tests.factories import NER_LABELS, TINY_HIDDEN, WORDS

TEXTS = ["john scored a great goal in the final", "the bank rates fell", "i love paris"]


def predict(client: TestClient, task: str, inputs: object) -> dict:
    response = client.post(f"/predict/{task}", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return response.json()


def test_embedding_is_a_unit_vector_and_keeps_the_request_shape(client):
    one = predict(client, "embed", "hello there")
    assert one["kind"] == "embedding" and one["version"] == 1 and one["truncated"] is False
    assert len(one["outputs"]) == TINY_HIDDEN
    assert abs(np.linalg.norm(one["outputs"]) - 1.0) < 1e-5
    many = predict(client, "embed", TEXTS)
    assert len(many["outputs"]) == len(TEXTS) and many["truncated"] == [False] * 3


def test_zero_shot_returns_label_score_and_all_scores(client):
    out = predict(client, "topic-zs", "the market shares and bank profit")["outputs"]
    assert set(out["scores"]) == {"sport", "business", "politics"}
    assert out["label"] in out["scores"] and out["score"] == max(out["scores"].values())
    assert abs(sum(out["scores"].values()) - 1.0) < 1e-5


def test_hot_added_classification_and_ner_heads_answer(client, admin, archives):
    for name in ("sentiment", "topic", "ner"):
        r = client.post(f"/admin/heads/{name}", content=archives[name], headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["version"] == 1
    assert client.post("/predict/topic", json={"inputs": "x"}).headers["x-head-version"] == "1"
    ner = predict(client, "ner", TEXTS)["outputs"]
    assert len(ner) == 3
    for text, spans in zip(TEXTS, ner, strict=True):
        for span in spans:
            assert span["entity"] in {label[2:] for label in NER_LABELS if label != "O"}
            assert text[span["start"] : span["end"]] == span["text"]
    tasks = {t["task"]: t for t in client.get("/tasks").json()["tasks"]}
    assert tasks["topic"]["branch_layer"] == 4 and tasks["ner"]["branch_layer"] == 5


def test_multi_task_request_costs_one_trunk_run(client, admin, archives):
    client.post("/admin/heads/topic", content=archives["topic"], headers=admin)
    metrics = client.app.state.services.metrics.registry

    def runs() -> float | None:
        return metrics.get_sample_value("mts_trunk_runs_total")

    before = runs()
    r = client.post("/predict", json={"inputs": TEXTS, "tasks": ["embed", "topic-zs", "topic"]})
    assert r.status_code == 200, r.text
    assert runs() - before == 1
    body = r.json()
    assert set(body) == {"embed", "topic-zs", "topic"}
    # Each task's answer equals what its own endpoint returns for the same batch.
    for task in body:
        assert body[task]["outputs"] == predict(client, task, TEXTS)["outputs"]


def test_a_batch_equals_its_texts_served_alone_within_tolerance(client):
    batch = np.array(predict(client, "embed", TEXTS)["outputs"])
    alone = np.array([predict(client, "embed", t)["outputs"] for t in TEXTS])
    diff = float(np.max(np.abs(batch - alone)))
    print(f"batch vs single max abs diff (embedding): {diff:.2e}")
    assert diff <= 1e-5


def test_long_texts_are_read_in_windows_or_cut_on_request_and_say_so(client):
    long = " ".join(WORDS * 3)  # a few windows of the tiny trunk's 64 tokens
    out = predict(client, "embed", [long, "short"])
    assert out["truncated"] == [False, False] and out["windows"][0] > 2 and out["windows"][1] == 1
    body = {"inputs": [long, "short"], "truncate": True}
    cut = client.post("/predict/embed", json=body).json()
    assert cut["truncated"] == [True, False] and cut["windows"] == [1, 1]


def test_metrics_count_requests_per_task_and_time_them_per_stage_and_kind(client):
    predict(client, "embed", "x")
    registry = client.app.state.services.metrics.registry
    ok = {"task": "embed", "outcome": "ok"}
    assert registry.get_sample_value("mts_requests_total", ok) == 1
    # Latency is pooled over tasks, head time split by kind (service/metrics.py says why).
    assert registry.get_sample_value("mts_request_duration_seconds_count") == 1
    for stage in ("tokenize", "trunk"):
        assert registry.get_sample_value("mts_stage_duration_seconds_count", {"stage": stage}) >= 1
    kind = {"kind": "embedding"}
    assert registry.get_sample_value("mts_head_duration_seconds_count", kind) >= 1
    assert registry.get_sample_value("mts_heads_served") == 2
    text = client.get("/metrics").text
    assert 'mts_requests_total{outcome="ok",task="embed"} 1.0' in text
    assert 'mts_request_duration_seconds_bucket{le="0.0001"}' in text
    assert 'mts_head_duration_seconds_bucket{kind="embedding",le="0.0001"}' in text
    # Only the per-task counter names a task; no series has a _created twin.
    assert {line.split("{")[0] for line in text.splitlines() if 'task="' in line} == {
        "mts_requests_total"
    }
    assert "_created" not in text


def test_removing_a_head_removes_its_metric_series(client, admin):
    predict(client, "topic-zs", "x")
    assert client.delete("/admin/heads/topic-zs", headers=admin).status_code == 200
    assert 'task="topic-zs"' not in client.get("/metrics").text


def test_health_readiness_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["heads"] == 2
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict/{task}", "/predict", "/tasks", "/admin/heads/{task}"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_zero_shot_head_added_at_run_time_from_labels(client, admin):
    body = {"labels": {"happy": "good great happy love", "unhappy": "bad awful sad hate"}}
    r = client.post("/admin/heads/mood/zero-shot", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert predict(client, "mood", "x")["outputs"]["label"] in {"happy", "unhappy"}


def test_head_loads_are_timed_and_refusals_counted(client, admin, archives):
    registry = client.app.state.services.metrics.registry
    client.post("/admin/heads/sentiment", content=archives["foreign"], headers=admin)
    assert registry.get_sample_value("mts_head_load_failures_total", {"task": "sentiment"}) == 1
    loads = registry.get_sample_value("mts_head_load_duration_seconds_count") or 0.0
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    assert registry.get_sample_value("mts_head_load_duration_seconds_count") == loads + 1
    client.delete("/admin/heads/sentiment", headers=admin)
    assert 'task="sentiment"' not in client.get("/metrics").text


def test_head_loads_run_at_a_lower_cpu_priority_than_serving(client):
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    if niceness() >= LOAD_NICENESS:
        pytest.skip(f"this process already runs at niceness {niceness()}")
    assert client.app.state.services.loads.submit(niceness).result() == LOAD_NICENESS
    assert niceness() < LOAD_NICENESS  # the serving threads keep theirs
