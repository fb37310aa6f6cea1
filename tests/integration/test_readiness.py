"""Readiness through the batch worker: a stopped or hung worker fails /readyz within the stated
bound, a busy one does not, and probes stay out of the serving metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from multitask_serve.service.engine import Engine
from multitask_serve.service.types import Job, JobResult
from tests.conftest import make_settings

TIMEOUT_S = 1.0  # readiness_timeout_seconds in these tests
# How late an answer may come past its bound: the tests share a small, busy machine.
SLACK_S = 0.75


class Gate:
    """Stands in for the engine's predict_many: waits until the gate opens, then runs it.

    A closed gate is a hung inference; ``delay`` makes every batch slow but finishing.
    """

    def __init__(self, engine: Engine, delay: float = 0.0) -> None:
        self._predict_many = engine.predict_many
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()
        self.entered_at = 0.0
        self.batches = 0
        self.delay = delay

    def __call__(self, jobs: list[Job]) -> list[JobResult]:
        if not self.entered.is_set():
            self.entered_at = time.perf_counter()
            self.entered.set()
        self.opened.wait()
        time.sleep(self.delay)
        self.batches += 1
        return self._predict_many(jobs)


def app_with(repo: Path, **overrides: object) -> FastAPI:
    """Requests always go through the worker here (no inline runs on the event loop): what
    readiness watches. A hang in an inline run is the last test's."""
    settings = {"readiness_timeout_seconds": TIMEOUT_S, "batch_inline_max_tokens": 0}
    return create_app(make_settings(repo, **{**settings, **overrides}), CollectorRegistry())


@pytest.fixture
def gated(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Gate]]:
    app = app_with(repo)
    gate = Gate(app.state.services.engine)
    # The batcher calls the serving engine's predict_many; the probe has an engine of its own.
    monkeypatch.setattr(app.state.services.engine, "predict_many", gate)
    with TestClient(app) as client:
        try:
            yield client, gate
        finally:
            gate.opened.set()  # never leave the inference thread hung: shutdown joins it


def timed_readyz(client: TestClient) -> tuple[int, dict, float]:
    started = time.perf_counter()
    r = client.get("/readyz")
    return r.status_code, r.json(), time.perf_counter() - started


def sample(client: TestClient, name: str, **labels: str) -> float:
    return client.app.state.services.metrics.registry.get_sample_value(name, labels) or 0.0


SERVING_SERIES = [
    ("mts_trunk_runs_total", {}),
    ("mts_batch_texts_count", {}),
    ("mts_batch_tokens_count", {}),
    ("mts_queue_wait_duration_seconds_count", {}),
    ("mts_stage_duration_seconds_count", {"stage": "tokenize"}),
    ("mts_stage_duration_seconds_count", {"stage": "trunk"}),
    ("mts_head_duration_seconds_count", {"kind": "embedding"}),
    ("mts_requests_total", {"task": "embed", "outcome": "ok"}),
    ("mts_requests_total", {"task": "embed", "outcome": "error"}),
    ("mts_request_duration_seconds_count", {}),
    ("mts_requests_in_flight", {}),
]


def serving_metrics(client: TestClient) -> dict[str, float]:
    return {f"{name}{labels}": sample(client, name, **labels) for name, labels in SERVING_SERIES}


def test_readyz_runs_its_probe_through_the_batcher_and_stays_out_of_the_serving_metrics(client):
    heads = sorted(client.get("/tasks").json()["tasks"], key=lambda t: t["task"])
    assert heads[0]["task"] == "embed"  # the head /readyz probes
    before = serving_metrics(client)
    for _ in range(5):
        r = client.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ready", "heads": 2, "probe": "ran"}
    assert serving_metrics(client) == before
    assert sample(client, "mts_readiness_probes_total", outcome="ok") == 5
    # The same series do count client traffic: one request, one trunk run, one queue wait.
    assert client.post("/predict/embed", json={"inputs": "a"}).status_code == 200
    after = serving_metrics(client)
    assert after["mts_trunk_runs_total{}"] == before["mts_trunk_runs_total{}"] + 1
    assert after["mts_queue_wait_duration_seconds_count{}"] == 1
    assert after["mts_requests_total{'task': 'embed', 'outcome': 'ok'}"] == 1


def test_readyz_fails_within_the_timeout_when_the_batch_worker_hangs(gated):
    client, gate = gated
    gate.opened.clear()
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(client.post, "/predict/embed", json={"inputs": "a"})
        assert gate.entered.wait(10)
        status, body, elapsed = timed_readyz(client)
        to_failure = time.perf_counter() - gate.entered_at
        print(f"hung worker: /readyz 503 after {to_failure:.2f} s (answered in {elapsed:.2f} s)")
        assert status == 503
        assert body["error"]["message"].startswith("batch worker stuck: no batch finished for")
        assert TIMEOUT_S - 0.05 <= to_failure <= TIMEOUT_S + SLACK_S
        assert sample(client, "mts_readiness_probes_total", outcome="stuck") == 1
        # From then on it fails at once, without queueing another probe.
        status, body, elapsed = timed_readyz(client)
        print(f"hung worker: the next /readyz answered 503 in {elapsed:.3f} s")
        assert status == 503 and "batch worker stuck" in body["error"]["message"]
        assert elapsed < SLACK_S
        # A hang may end (a long batch does): liveness leaves that to readiness.
        assert client.get("/healthz").status_code == 200
        # The hang ends: the held request is answered, and the pod is ready again.
        gate.opened.set()
        assert hung.result(timeout=30).status_code == 200
    status, body, _ = timed_readyz(client)
    assert status == 200 and body["probe"] == "ran"


def test_a_probe_queued_behind_batches_that_finish_is_busy_not_stuck(repo, monkeypatch):
    # Each request is a batch of its own that takes 0.25 s: 16 queued requests are 4 s of work,
    # four times the timeout, but a batch finishes every 0.25 s.
    app = app_with(repo, batch_max_texts=1)
    gate = Gate(app.state.services.engine, delay=0.25)
    monkeypatch.setattr(app.state.services.engine, "predict_many", gate)
    with TestClient(app) as client, ThreadPoolExecutor(16) as pool:
        requests = [
            pool.submit(client.post, "/predict/embed", json={"inputs": f"text {i}"})
            for i in range(16)
        ]
        assert gate.entered.wait(10)
        time.sleep(0.2)  # the rest queue up behind the first batch
        status, body, elapsed = timed_readyz(client)
        print(f"busy worker: /readyz {status} {body} in {elapsed:.2f} s, {gate.batches} batches")
        assert status == 200 and body["probe"] == "busy"
        assert elapsed <= TIMEOUT_S + SLACK_S
        assert all(r.result(timeout=30).status_code == 200 for r in requests)
        assert sample(client, "mts_readiness_probes_total", outcome="busy") == 1
        # Once the queue has drained, the probe runs again.
        status, body, _ = timed_readyz(client)
        assert status == 200 and body["probe"] == "ran"


def test_a_long_batch_shorter_than_the_timeout_is_not_taken_for_a_hang(repo, monkeypatch):
    app = app_with(repo)
    gate = Gate(app.state.services.engine, delay=TIMEOUT_S * 0.6)
    monkeypatch.setattr(app.state.services.engine, "predict_many", gate)
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        request = pool.submit(client.post, "/predict/embed", json={"inputs": "a"})
        assert gate.entered.wait(10)
        status, body, elapsed = timed_readyz(client)
        print(f"one {gate.delay:.1f} s batch: /readyz {status} {body} in {elapsed:.2f} s")
        assert status == 200 and body["probe"] == "ran"  # its turn came after the long batch
        assert request.result(timeout=30).status_code == 200


def test_readyz_and_predictions_fail_at_once_when_the_batch_worker_has_stopped(client, caplog):
    worker = client.app.state.services.predictor.batcher._worker

    async def cancel() -> None:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await asyncio.sleep(0)  # the worker's done callbacks have run

    with caplog.at_level(logging.ERROR, logger="multitask_serve.service.batcher"):
        client.portal.call(cancel)
    assert "batch worker stopped" in caplog.text
    status, body, elapsed = timed_readyz(client)
    print(f"stopped worker: /readyz 503 in {elapsed:.3f} s")
    assert status == 503 and elapsed < SLACK_S
    assert body["error"]["message"] == "batch worker stopped: cancelled"
    started = time.perf_counter()
    r = client.post("/predict/embed", json={"inputs": "a"})
    elapsed = time.perf_counter() - started
    print(f"stopped worker: /predict 503 in {elapsed:.3f} s")
    assert r.status_code == 503 and elapsed < SLACK_S
    assert r.json()["error"] == {
        "code": "unavailable",
        "message": "batch worker stopped: cancelled",
    }
    assert r.headers["Retry-After"] == "1"
    assert sample(client, "mts_readiness_probes_total", outcome="stopped") == 1
    assert sample(client, "mts_requests_total", task="embed", outcome="error") == 1
    # Nothing but a restart brings the worker back: liveness fails too.
    live = client.get("/healthz")
    assert live.status_code == 503
    assert live.json()["error"]["message"] == "batch worker stopped: cancelled"


def test_a_crash_in_the_batch_worker_is_logged_and_fails_its_requests_and_later_ones_with_503(
    repo, monkeypatch, caplog
):
    app = app_with(repo)
    # An engine that answers fewer results than it was given jobs: the worker's own code raises
    # while handing results out, outside any request's error handling.
    monkeypatch.setattr(app.state.services.engine, "predict_many", lambda jobs: [])
    with (
        TestClient(app) as client,
        caplog.at_level(logging.ERROR, logger="multitask_serve.service.batcher"),
    ):
        started = time.perf_counter()
        r = client.post("/predict/embed", json={"inputs": "a"})
        print(
            f"crashed worker: the request in the lost batch answered 503 in "
            f"{time.perf_counter() - started:.3f} s"
        )
        assert r.status_code == 503
        message = r.json()["error"]["message"]
        assert message.startswith("batch worker stopped: ValueError: zip()")
        crash = next(rec for rec in caplog.records if rec.name == "multitask_serve.service.batcher")
        assert "crashed" in crash.getMessage() and crash.exc_info is not None
        assert "Traceback" in caplog.text
        r = client.post("/predict/embed", json={"inputs": "b"})
        assert r.status_code == 503 and r.json()["error"]["message"] == message
        status, body, elapsed = timed_readyz(client)
        assert status == 503 and body["error"]["message"] == message and elapsed < SLACK_S


def test_readyz_fails_when_the_probe_inference_fails(client, monkeypatch):
    def broken(*_: object) -> None:
        raise RuntimeError("the trunk session is gone")

    monkeypatch.setattr(client.app.state.services.predictor.probe_engine, "predict", broken)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "probe inference failed: the trunk session is gone"
    assert sample(client, "mts_readiness_probes_total", outcome="failed") == 1
    # Predictions do not share the probe's engine object.
    assert client.post("/predict/embed", json={"inputs": "a"}).status_code == 200


def test_readyz_probes_the_trunk_alone_when_no_head_is_served(client, admin):
    for task in ("embed", "topic-zs"):
        assert client.delete(f"/admin/heads/{task}", headers=admin).status_code == 200
    runs = sample(client, "mts_trunk_runs_total")
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "heads": 0, "probe": "ran"}
    assert sample(client, "mts_trunk_runs_total") == runs


def test_readyz_says_shutting_down_while_draining_even_with_a_healthy_worker(client):
    client.app.state.services.draining.set()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "shutting down: finishing in-flight requests"
    assert sample(client, "mts_readiness_probes_total", outcome="ok") == 0


def test_a_hang_in_a_request_run_inline_holds_every_answer_until_it_ends(repo, monkeypatch):
    """The cost of inline runs (``batch_inline_max_tokens``): the event loop runs the inference,
    so while it hangs nothing is answered, probes included; Kubernetes counts a probe that times
    out as failed, where the worker's hang gets a 503 (the tests above)."""
    app = app_with(repo, batch_inline_max_tokens=256)
    gate = Gate(app.state.services.engine)
    monkeypatch.setattr(app.state.services.engine, "predict_many", gate)
    gate.opened.clear()
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(client.post, "/predict/embed", json={"inputs": "a"})
            assert gate.entered.wait(10)
            health = pool.submit(client.get, "/healthz")
            time.sleep(TIMEOUT_S)
            assert not health.done() and not held.done()
        finally:
            gate.opened.set()
        assert held.result(timeout=30).status_code == 200
        assert health.result(timeout=30).status_code == 200
