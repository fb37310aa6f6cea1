"""The one prediction entry point (service/predict.py), called without a request, and the routes
of both wire formats answering through it."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from multitask_serve.service.errors import InvalidInput, TooLarge, Unavailable, UnknownTask
from multitask_serve.service.predict import Predictor, Readiness
from tests.conftest import make_settings

HINT = "unknown task 'nope'; GET /tasks lists the served ones"


def test_texts_are_checked_before_any_work(repo):
    app = create_app(make_settings(repo, max_batch_texts=2), CollectorRegistry())
    predictor: Predictor = app.state.services.predictor
    assert predictor.texts("a") == ["a"] and predictor.texts(["a", "b"]) == ["a", "b"]
    with pytest.raises(InvalidInput, match="empty list"):
        predictor.texts([])
    with pytest.raises(TooLarge, match="3 texts in one request; the limit is 2"):
        predictor.texts(["a", "b", "c"])
    with pytest.raises(InvalidInput, match=r"inputs\[1\] is not valid Unicode"):
        predictor.texts(["a", "\ud800"])


def test_tasks_resolve_in_the_registry_and_the_engine_holds_none(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    predictor: Predictor = app.state.services.predictor
    heads = predictor.resolve(["topic-zs", "embed"])
    assert list(heads) == ["topic-zs", "embed"]
    assert heads["embed"] is app.state.services.registry.snapshot()["embed"]
    with pytest.raises(UnknownTask) as refused:
        predictor.resolve(["embed", "nope", "nada"])
    assert refused.value.message == "unknown task 'nope'" and refused.value.task == "nope"
    engine = app.state.services.engine
    assert not any(hasattr(engine, name) for name in ("registry", "attach", "resolve"))


def test_a_prediction_runs_through_the_batcher_and_is_counted(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    predictor: Predictor = app.state.services.predictor
    sample = app.state.services.metrics.registry.get_sample_value
    heads = app.state.services.registry.loaded(["embed"])
    alone = app.state.services.engine.predict(heads, ["a text", "another"])[0]["embed"].outputs
    with TestClient(app) as client:  # the batch worker runs
        done = client.portal.call(predictor.run, heads, ["a text", "another"])
        ready = client.portal.call(predictor.ready)
    assert done.truncated == [False, False]
    assert np.allclose(done.results["embed"].outputs, alone, atol=1e-5)
    assert sample("mts_requests_total", {"task": "embed", "outcome": "ok"}) == 1
    assert ready == Readiness(heads=len(app.state.services.registry.snapshot()), ran=True)


def test_readiness_fails_while_draining_and_liveness_once_the_worker_stopped(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    predictor: Predictor = app.state.services.predictor
    predictor.live()
    with TestClient(app) as client:
        app.state.services.draining.set()
        with pytest.raises(Unavailable, match="shutting down"):
            client.portal.call(predictor.ready)
    with pytest.raises(Unavailable, match="batch worker stopped: shutting down"):
        predictor.live()


def test_both_wire_formats_answer_readiness_from_the_same_entry_point(client, monkeypatch):
    async def not_ready() -> Readiness:
        raise Unavailable("not today")

    monkeypatch.setattr(client.app.state.services.predictor, "ready", not_ready)
    ours, theirs = client.get("/readyz"), client.get("/v2/health/ready")
    assert ours.status_code == theirs.status_code == 503
    assert ours.json() == {"error": {"code": "unavailable", "message": "not today"}}
    assert theirs.json() == {"error": "not today"}
    assert ours.headers["retry-after"] == theirs.headers["retry-after"] == "1"


def test_an_unknown_task_gets_the_route_hint_in_both_wire_formats(client):
    ours = client.post("/predict/nope", json={"inputs": "x"})
    assert ours.status_code == 404
    assert ours.json() == {"error": {"code": "not_found", "message": HINT}}
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    theirs = client.post("/v2/models/nope/infer", json=body)
    assert theirs.status_code == 404 and theirs.json() == {"error": HINT}
