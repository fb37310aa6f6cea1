"""The in-flight bound in the real app: one count over /predict and the v2 infer routes, each
refused in its own error form, and every other route untouched while the bound is full."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import INFERENCE as is_inference
from multitask_serve.service.app import create_app
from tests.conftest import make_settings

INFER_BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
# The app's operations that run inference; every other one must not be counted.
INFERENCE_OPERATIONS = {
    ("POST", "/predict"),
    ("POST", "/predict/{task}"),
    ("POST", "/v2/models/{task}/infer"),
    ("POST", "/v2/models/{task}/versions/{version}/infer"),
    ("POST", "/tei/{task}"),
    ("POST", "/tei/{task}/embed"),
    ("POST", "/tei/{task}/predict"),
    ("POST", "/v1/embeddings"),
}


class Held:
    """A client whose inference requests sent with ``post`` wait in the batcher until released.

    Any other request that reaches the batcher (one the bound should have refused) goes through
    at once, so a missing refusal fails an assertion instead of hanging the test.
    """

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.tickets = 0  # requests sent by post() that have not reached the batcher yet
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        batcher = client.app.state.services.predictor.batcher  # type: ignore[attr-defined]
        submit = batcher.submit

        async def held(heads, texts, whole=True):
            if self.tickets > 0:
                self.tickets -= 1
                self.entered.release()
                while not self.release.is_set():
                    await asyncio.sleep(0.005)
            return await submit(heads, texts, whole)

        batcher.submit = held
        self.pool = ThreadPoolExecutor(4)

    def post(self, path: str, body: dict) -> Future:
        """Send in the background; return once the request waits in the batcher."""
        self.tickets += 1
        answer = self.pool.submit(self.client.post, path, json=body)
        assert self.entered.acquire(timeout=30), "the held request never reached the batcher"
        return answer


@pytest.fixture
def held(repo) -> Iterator[Held]:
    app = create_app(make_settings(repo, max_in_flight_requests=2), CollectorRegistry())
    with TestClient(app) as client:
        h = Held(client)
        try:
            yield h
        finally:
            h.release.set()
            h.pool.shutdown(wait=True)


def assert_429(response) -> object:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    return response.json()["error"]


def test_v2_infer_beyond_the_bound_gets_429_in_the_protocols_form(held):
    c = held.client
    first = held.post("/v2/models/topic-zs/infer", INFER_BODY)
    second = held.post("/v2/models/embed/versions/1/infer", INFER_BODY)
    for path in ("/v2/models/topic-zs/infer", "/v2/models/embed/versions/1/infer"):
        error = assert_429(c.post(path, json=INFER_BODY))
        assert isinstance(error, str) and "in flight (limit 2)" in error
    # Our own route, refused by the same count, answers in our form.
    error = assert_429(c.post("/predict/embed", json={"inputs": "x"}))
    assert isinstance(error, dict) and error["code"] == "overloaded"
    held.release.set()
    assert first.result(timeout=30).status_code == 200
    assert second.result(timeout=30).status_code == 200
    assert c.post("/v2/models/topic-zs/infer", json=INFER_BODY).status_code == 200


def test_one_count_across_predict_and_v2_infer(held):
    c = held.client
    first = held.post("/predict/embed", {"inputs": "x"})
    second = held.post("/v2/models/topic-zs/infer", INFER_BODY)
    assert isinstance(assert_429(c.post("/v2/models/embed/infer", json=INFER_BODY)), str)
    error = assert_429(c.post("/predict", json={"tasks": ["embed"], "inputs": "x"}))
    assert error["code"] == "overloaded"
    held.release.set()
    assert [first.result(30).status_code, second.result(30).status_code] == [200, 200]


def test_other_routes_are_never_refused_while_the_bound_is_full(held, admin):
    c = held.client
    futures = [held.post("/v2/models/embed/infer", INFER_BODY) for _ in range(2)]
    assert_429(c.post("/v2/models/embed/infer", json=INFER_BODY))  # the bound is full
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/tasks",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/embed",
        "/v2/models/embed/versions/1",
        "/v2/models/embed/ready",
        "/v2/models/embed/versions/1/ready",
    ):
        assert c.get(path).status_code == 200, path
    assert c.get("/admin/heads/embed/versions", headers=admin).status_code == 200
    zero_shot = {"labels": {"yes": "yes indeed", "no": "no never"}}
    added = c.post("/admin/heads/mood/zero-shot", json=zero_shot, headers=admin)
    assert added.status_code in (200, 201), added.text
    held.release.set()
    assert [f.result(30).status_code for f in futures] == [200, 200]


def test_every_inference_route_of_the_app_and_no_other_is_counted(client):
    """A new route must be classified: inference routes go in their wire format's
    ``WireFormat.inference``."""
    operations = {
        (method.upper(), path)
        for path, item in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in item
    }
    assert operations >= INFERENCE_OPERATIONS
    for method, path in operations:
        concrete = path.replace("{task}", "sentiment").replace("{version}", "1")
        counted = is_inference(method, concrete)
        assert counted == ((method, path) in INFERENCE_OPERATIONS), (method, path)
