"""Shadowing a candidate head on live traffic: the API, the report against an oracle, and the
guarantees (served answers bit-identical, no extra trunk run, a failing or slow candidate never
fails or delays an answer, replicas pick shadows up from the repository)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.app import create_app
from multitask_serve.service.batcher import Batcher
from multitask_serve.service.residency import LoadedHead
from multitask_serve.service.shadow import ShadowRunner
from multitask_serve.service.types import Job
from tests.conftest import make_settings
from tests.factories import NER_LABELS, PROBES, archive, export_head, outputs, tree

TEXTS = [*PROBES, "the market fell", "mary hates the phone", "a great film", "bad rates", "hi"]


def _sample(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    value = client.app.state.services.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


def _settle(client: TestClient) -> None:
    """Wait until the shadow thread has finished what it was handed."""
    runner: ShadowRunner = client.app.state.services.shadows.runner
    deadline = time.monotonic() + 30
    while not runner.idle():
        assert time.monotonic() < deadline, "the shadow thread never finished"
        time.sleep(0.01)


def _serve_and_shadow(client, admin, archives, served="sentiment", candidate="sentiment-v2"):
    assert client.post("/admin/heads/sentiment", content=archives[served], headers=admin).is_success
    r = client.post("/admin/heads/sentiment/shadow", content=archives[candidate], headers=admin)
    assert r.status_code == 201, r.text
    return r


def test_a_shadow_is_stored_as_a_version_that_is_not_served(client, admin, archives, repo):
    r = _serve_and_shadow(client, admin, archives)
    assert r.json()["version"] == 2 and r.json()["shadow"] is True
    assert client.post("/predict/sentiment", json={"inputs": "x"}).json()["version"] == 1
    listed = client.get("/admin/heads/sentiment/versions", headers=admin).json()
    assert (listed["current"], listed["shadow"]) == (1, 2)
    stored = ModelRepository(repo)
    assert stored.current_version("sentiment") == 1 and stored.shadow_version("sentiment") == 2


def test_served_answers_are_bit_identical_with_and_without_a_shadow(client, admin, archives):
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    before = outputs(client)
    client.post("/admin/heads/sentiment/shadow", content=archives["sentiment-v2"], headers=admin)
    assert outputs(client) == before
    # The engine itself, one batch composition, rows of several tasks and a sub-batch per head:
    # every result equal, bit for bit, with the candidate's tap asked of the same trunk run.
    engine, registry = client.app.state.services.engine, client.app.state.services.registry
    heads = registry.loaded(["sentiment", "embed", "topic-zs"])
    jobs = [
        Job({"sentiment": heads["sentiment"], "embed": heads["embed"]}, TEXTS[:3]),
        Job({"topic-zs": heads["topic-zs"]}, TEXTS[3:6]),
        Job({"sentiment": heads["sentiment"]}, TEXTS[6:]),
    ]
    plain, none = engine.predict_shadowed(jobs, {})
    shadowed, works = engine.predict_shadowed(jobs, client.app.state.services.shadows.snapshot())
    assert none == [] and works and shadowed == plain
    assert {w.task for w in works} == {"sentiment"}
    assert sum(len(w.texts) for w in works) == 3 + len(TEXTS[6:])


def test_the_shadow_adds_no_trunk_run(client, admin, archives):
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)

    def trunk_runs_per_request() -> list[float]:
        runs = []
        for text in TEXTS:  # one request at a time: one batch each
            before = _sample(client, "mts_trunk_runs_total")
            assert client.post("/predict/sentiment", json={"inputs": [text, "ok"]}).is_success
            runs.append(_sample(client, "mts_trunk_runs_total") - before)
        return runs

    without = trunk_runs_per_request()
    client.post("/admin/heads/sentiment/shadow", content=archives["sentiment-v2"], headers=admin)
    with_shadow = trunk_runs_per_request()
    _settle(client)
    assert with_shadow == without and sum(without) >= len(TEXTS)
    assert _sample(client, "mts_shadow_texts_total", {"task": "sentiment", "outcome": "compared"})


def test_the_report_matches_what_the_candidate_answers_when_served(client, admin, archives):
    _serve_and_shadow(client, admin, archives)
    served = client.post("/predict/sentiment", json={"inputs": TEXTS}).json()["outputs"]
    _settle(client)
    report = client.get("/admin/heads/sentiment/shadow", headers=admin).json()
    # The oracle: the candidate's own answers once it is served.
    assert client.post("/admin/heads/sentiment/shadow/promote", headers=admin).status_code == 200
    candidate = client.post("/predict/sentiment", json={"inputs": TEXTS}).json()["outputs"]
    agree = [s["label"] == c["label"] for s, c in zip(served, candidate, strict=True)]
    diffs = [
        np.mean([abs(s["scores"][k] - c["scores"][k]) for k in s["scores"]])
        for s, c in zip(served, candidate, strict=True)
    ]
    assert report["texts_seen"] == len(TEXTS) and report["texts_skipped"] == 0
    assert report["served_version"] == 1 and report["candidate_version"] == 2
    assert report["label_agreement"] == pytest.approx(sum(agree) / len(agree))
    assert report["mean_abs_score_diff"] == pytest.approx(float(np.mean(diffs)), abs=1e-6)
    assert report["mean_abs_score_diff"] > 0
    latency = report["latency_ms_per_batch"]
    assert latency["served"] > 0 and latency["candidate"] > 0
    agreements = _sample(client, "mts_shadow_agreements_total", {"task": "sentiment"})
    assert agreements == sum(agree)


def test_an_identical_candidate_agrees_fully_for_labels_and_entity_spans(
    client, admin, archives, exporter
):
    _serve_and_shadow(client, admin, archives, candidate="sentiment")
    ner = export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, k=1, seed=4)
    client.post("/admin/heads/ner", content=archive(ner), headers=admin)
    r = client.post("/admin/heads/ner/shadow", content=archive(ner), headers=admin)
    assert r.status_code == 201
    client.post("/predict", json={"inputs": TEXTS, "tasks": ["sentiment", "ner"]})
    _settle(client)
    sentiment = client.get("/admin/heads/sentiment/shadow", headers=admin).json()
    assert sentiment["label_agreement"] == 1.0 and sentiment["mean_abs_score_diff"] == 0.0
    ner_report = client.get("/admin/heads/ner/shadow", headers=admin).json()
    assert ner_report["texts_seen"] == len(TEXTS) and ner_report["agreement"] == 1.0
    spans = ner_report["entity_spans"]
    assert spans["served"] == spans["candidate"] == spans["matched"] > 0
    assert ner_report["entity_span_f1"] == 1.0


def test_shadow_refusals(client, admin, archives, exporter, repo):
    no_task = client.post("/admin/heads/sentiment/shadow", content=archives["sentiment"])
    assert no_task.status_code == 401
    r = client.post("/admin/heads/sentiment/shadow", content=archives["sentiment"], headers=admin)
    assert r.status_code == 404  # nothing served to compare with
    _serve_and_shadow(client, admin, archives)
    files = tree(repo)
    second = client.post(
        "/admin/heads/sentiment/shadow", content=archives["sentiment"], headers=admin
    )
    assert second.status_code == 409 and "replace=true" in second.json()["error"]["message"]
    foreign = client.post(
        "/admin/heads/sentiment/shadow?replace=true", content=archives["foreign"], headers=admin
    )
    assert foreign.status_code == 409 and "trunk" in foreign.json()["error"]["message"]
    spans = export_head(exporter, "topic-zs", Kind.TOKEN_CLASSIFICATION, NER_LABELS, k=1, seed=4)
    other_kind = client.post("/admin/heads/topic-zs/shadow", content=archive(spans), headers=admin)
    assert other_kind.status_code == 409
    assert tree(repo) == files  # refusals leave no trace
    for method, path in [
        ("GET", "/admin/heads/embed/shadow"),
        ("POST", "/admin/heads/embed/shadow/promote"),
        ("DELETE", "/admin/heads/embed/shadow"),
    ]:
        r = client.request(method, path, headers=admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, r)


def test_replace_starts_a_new_shadow_and_its_report_over(client, admin, archives):
    _serve_and_shadow(client, admin, archives)
    client.post("/predict/sentiment", json={"inputs": TEXTS})
    _settle(client)
    r = client.post(
        "/admin/heads/sentiment/shadow?replace=true", content=archives["sentiment"], headers=admin
    )
    assert r.status_code == 201 and r.json()["version"] == 3
    report = client.get("/admin/heads/sentiment/shadow", headers=admin).json()
    assert report["candidate_version"] == 3 and report["texts_seen"] == 0


def test_promote_serves_the_candidate_and_discard_keeps_serving_the_old(
    client, admin, archives, repo
):
    _serve_and_shadow(client, admin, archives)
    r = client.delete("/admin/heads/sentiment/shadow", headers=admin)
    assert r.status_code == 200 and r.json() == {"task": "sentiment", "discarded": 2}
    assert client.get("/admin/heads/sentiment/shadow", headers=admin).status_code == 404
    assert client.post("/predict/sentiment", json={"inputs": "x"}).json()["version"] == 1
    stored = ModelRepository(repo)
    assert stored.shadow_version("sentiment") is None and stored.versions("sentiment") == [1, 2]

    r = client.post(
        "/admin/heads/sentiment/shadow", content=archives["sentiment-v2"], headers=admin
    )
    assert r.json()["version"] == 3  # a discarded number is never reused
    r = client.post("/admin/heads/sentiment/shadow/promote", headers=admin)
    assert r.status_code == 200 and r.json()["version"] == 3
    assert client.post("/predict/sentiment", json={"inputs": "x"}).json()["version"] == 3
    assert stored.current_version("sentiment") == 3 and stored.shadow_version("sentiment") is None
    assert client.get("/admin/heads/sentiment/shadow", headers=admin).status_code == 404


def test_a_replica_picks_up_shadows_promotions_and_discards_from_the_repository(
    repo, admin, archives
):
    settings = make_settings(repo, repository_poll_seconds=0)
    a = TestClient(create_app(settings, CollectorRegistry()))
    b = TestClient(create_app(settings, CollectorRegistry()))
    registry, shadows = b.app.state.services.registry, b.app.state.services.shadows

    def sync() -> tuple[list[str], list[str]]:  # what the replica's repository watcher does
        changed = registry.sync()
        shadows.sync()
        return changed

    a.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    a.post("/admin/heads/sentiment/shadow", content=archives["sentiment-v2"], headers=admin)
    sync()
    assert shadows.get("sentiment").version == 2
    assert b.get("/admin/heads/sentiment/shadow", headers=admin).json()["candidate_version"] == 2
    a.delete("/admin/heads/sentiment/shadow", headers=admin)
    sync()
    assert "sentiment" not in shadows.snapshot()
    a.post("/admin/heads/sentiment/shadow", content=archives["sentiment-v2"], headers=admin)
    sync()
    a.post("/admin/heads/sentiment/shadow/promote", headers=admin)
    assert registry.sync() == (["sentiment"], [])  # the served head alone ends the shadow here
    assert shadows.snapshot() == {} and registry.snapshot()["sentiment"].version == 3
    # A restart reads the shadow pointer too.
    a.post("/admin/heads/sentiment/shadow", content=archives["sentiment"], headers=admin)
    c = create_app(settings, CollectorRegistry())
    assert c.state.services.shadows.get("sentiment").version == 4


class _Exploding:
    """An ONNX Runtime session that fails at run time (what a candidate may do on live texts)."""

    def run(self, hidden: Any, attention_mask: Any) -> Any:
        raise RuntimeError("candidate exploded")


class _Slow:
    """A real head session that takes ``seconds`` longer per run."""

    def __init__(self, session: Any, seconds: float) -> None:
        self._session, self._seconds = session, seconds

    def run(self, hidden: Any, attention_mask: Any) -> Any:
        time.sleep(self._seconds)
        return self._session.run(hidden, attention_mask)


def _batcher_with(client: TestClient, candidate: LoadedHead) -> tuple[Batcher, ShadowRunner]:
    app = client.app
    runner = ShadowRunner(
        lambda: {"sentiment": candidate},
        app.state.services.engine.run_shadow,
        app.state.services.metrics,
        ThreadPoolExecutor(1),
    )
    batcher = Batcher(
        app.state.services.engine, app.state.services.metrics, 32, 8192, 0.0, 64, shadow=runner
    )
    return batcher, runner


def test_a_failing_shadow_never_fails_the_served_answer(client, admin, archives):
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    served = client.app.state.services.registry.loaded(["sentiment"])["sentiment"]
    candidate = LoadedHead(served.spec, 2, served.size, _Exploding())  # type: ignore[arg-type]
    batcher, runner = _batcher_with(client, candidate)
    alone = client.app.state.services.engine.predict({"sentiment": served}, TEXTS)[0]

    async def go() -> Any:
        batcher.start()
        try:
            return await batcher.submit({"sentiment": served}, TEXTS)
        finally:
            await batcher.stop()

    result = asyncio.run(go())
    assert result.results == alone
    deadline = time.monotonic() + 10
    while not runner.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    report = runner.report(served, candidate)
    assert report["texts_failed"] == len(TEXTS) and report["texts_seen"] == 0
    assert "candidate exploded" in report["last_error"]
    failed = {"task": "sentiment", "outcome": "failed"}
    assert _sample(client, "mts_shadow_texts_total", failed) == len(TEXTS)


def test_a_slow_shadow_never_delays_an_answer_and_counts_what_it_skips(client, admin, archives):
    client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    served = client.app.state.services.registry.loaded(["sentiment"])["sentiment"]
    slow_s = 2.0
    candidate = LoadedHead(served.spec, 2, served.size, _Slow(served.session, slow_s))  # type: ignore[arg-type]
    batcher, runner = _batcher_with(client, candidate)
    requests = 4

    async def go() -> list[float]:
        batcher.start()
        took = []
        try:
            for _ in range(requests):  # one after another: each its own batch
                started = time.perf_counter()
                await batcher.submit({"sentiment": served}, TEXTS[:2])
                took.append(time.perf_counter() - started)
        finally:
            await batcher.stop()
        return took

    took = asyncio.run(go())
    # The bound: an answer never waits for a shadow run (here 2 s each); the first batch's
    # shadow is still running while the next ones are answered, and those are skipped.
    assert max(took) < slow_s / 2, took
    deadline = time.monotonic() + 10
    while not runner.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    report = runner.report(served, candidate)
    assert report["texts_seen"] == 2 and report["texts_skipped"] == 2 * (requests - 1)
    skipped = {"task": "sentiment", "outcome": "skipped"}
    assert _sample(client, "mts_shadow_texts_total", skipped) == 2 * (requests - 1)


def test_rolling_back_onto_the_shadow_version_serves_it_and_ends_the_shadow(
    client, admin, archives, repo
):
    _serve_and_shadow(client, admin, archives)  # served 1, shadow 2
    client.post("/admin/heads/sentiment?replace=true", content=archives["sentiment"], headers=admin)
    r = client.post("/admin/heads/sentiment/rollback", headers=admin)  # the newest below 3: 2
    assert r.json()["version"] == 2
    assert client.get("/admin/heads/sentiment/shadow", headers=admin).status_code == 404
    assert ModelRepository(repo).shadow_version("sentiment") is None
