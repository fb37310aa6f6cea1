"""What the app tells its operators: every answer counted by route template and status (the
limits' 429 and 413 too), the process's own metrics, and a request id echoed on every answer and
named in every log line of its request."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from multitask_serve.service.logs import JsonFormatter, RequestIdFilter
from tests.conftest import make_settings
from tests.integration.test_inflight_limit import INFER_BODY, Held

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def count(registry: CollectorRegistry, route: str, status: int, method: str = "POST") -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return registry.get_sample_value("mts_http_requests_total", labels) or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def limited(repo, registry) -> Iterator[Held]:
    """An app with a small body limit whose inference bound (2) a test can fill."""
    settings = make_settings(repo, max_in_flight_requests=2, max_body_bytes=1024)
    with TestClient(create_app(settings, registry)) as client:
        held = Held(client)
        try:
            yield held
        finally:
            held.release.set()
            held.pool.shutdown(wait=True)


def test_the_in_flight_limits_429s_are_counted_with_their_route_template(limited, registry):
    c = limited.client
    running = [limited.post("/predict/embed", {"inputs": "x"}) for _ in range(2)]
    refused = c.post("/predict/sentiment", json={"inputs": "x"})
    assert refused.status_code == 429
    assert c.post("/v2/models/embed/infer", json=INFER_BODY).status_code == 429
    assert count(registry, "/predict/{task}", 429) == 1
    assert count(registry, "/v2/models/{task}/infer", 429) == 1
    limited.release.set()
    assert [r.result(timeout=30).status_code for r in running] == [200, 200]
    assert count(registry, "/predict/{task}", 200) == 2


def test_413_404_422_and_405_are_counted_with_their_route_template(limited, registry):
    c = limited.client
    too_large = c.post(
        "/predict/embed", content=b"x" * 2048, headers={"content-type": "application/json"}
    )
    assert too_large.status_code == 413  # refused by BodyLimit, before the app
    assert c.post("/predict/no-such-task", json={"inputs": "x"}).status_code == 404
    assert c.post("/predict/embed", json={"texts": "x"}).status_code == 422
    assert c.delete("/tasks").status_code == 405
    assert count(registry, "/predict/{task}", 413) == 1
    assert count(registry, "/predict/{task}", 404) == 1
    assert count(registry, "/predict/{task}", 422) == 1
    assert count(registry, "/tasks", 405, method="DELETE") == 1


def test_unmatched_paths_and_unknown_methods_share_one_label_value(client):
    registry = client.app.state.services.metrics.registry  # type: ignore[attr-defined]
    for path in ("/wp-admin/setup.php", "/.env", "/predict/a/b/c"):
        assert client.get(path).status_code == 404
    assert client.request("BREW", "/tasks").status_code == 405
    assert count(registry, "other", 404, method="GET") == 3
    assert count(registry, "/tasks", 405, method="other") == 1
    exposition = client.get("/metrics").text
    assert "wp-admin" not in exposition and ".env" not in exposition and "BREW" not in exposition
    # /metrics counts itself too (the scrape before this one).
    assert 'mts_http_requests_total{method="GET",route="/metrics",status="200"}' in (
        client.get("/metrics").text
    )


def test_process_metrics_are_exposed_once_per_app_registry(repo):
    apps = [create_app(make_settings(repo), CollectorRegistry()) for _ in range(3)]
    for app in apps:
        with TestClient(app) as c:
            text = c.get("/metrics").text
        for family in (
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "python_info",
        ):
            assert f"\n{family}" in text, family
        assert text.count("# TYPE process_cpu_seconds_total counter") == 1


def test_a_request_id_is_generated_when_absent_and_echoed_when_given(client):
    generated = client.get("/healthz").headers["x-request-id"]
    assert GENERATED_ID.fullmatch(generated)
    assert client.get("/healthz").headers["x-request-id"] != generated
    given = "client-7f3a:attempt=2"
    assert client.get("/healthz", headers={"X-Request-ID": given}).headers["x-request-id"] == given
    # Errors too: the app's own and a route's 404.
    missing = client.post("/predict/nope", json={"inputs": "x"}, headers={"X-Request-ID": given})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == given
    assert client.get("/nowhere", headers={"X-Request-ID": given}).headers["x-request-id"] == given


@pytest.mark.parametrize(
    "invalid",
    ["x" * 129, "two words", "tab\there", "caf\u00e9", ""],
    ids=["too-long", "space", "control", "non-ascii", "empty"],
)
def test_an_invalid_request_id_is_replaced_not_refused(client, invalid):
    answer = client.get("/healthz", headers={"X-Request-ID": invalid.encode("utf-8")})
    assert answer.status_code == 200
    assert GENERATED_ID.fullmatch(answer.headers["x-request-id"])
    assert answer.headers.get_list("x-request-id") == [answer.headers["x-request-id"]]


def test_answers_the_limits_give_before_the_app_carry_the_request_id(limited):
    c = limited.client
    running = [limited.post("/predict/embed", {"inputs": "x"}) for _ in range(2)]
    refused = c.post("/predict/embed", json={"inputs": "x"}, headers={"X-Request-ID": "r-429"})
    assert refused.status_code == 429 and refused.headers["x-request-id"] == "r-429"
    limited.release.set()
    for r in running:
        assert GENERATED_ID.fullmatch(r.result(timeout=30).headers["x-request-id"])
    too_large = c.post(
        "/predict/embed",
        content=b"x" * 2048,
        headers={"content-type": "application/json", "X-Request-ID": "r-413"},
    )
    assert too_large.status_code == 413 and too_large.headers["x-request-id"] == "r-413"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record logged while the test runs, as service/logs.py's JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_log_lines_written_for_a_request_name_its_id(client, admin, json_lines):
    zero_shot = {"labels": {"yes": "yes indeed", "no": "no never"}}
    headers = {**admin, "X-Request-ID": "add-mood-1"}
    added = client.post("/admin/heads/mood/zero-shot", json=zero_shot, headers=headers)
    assert added.status_code == 201, added.text
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    # Logged in the head-load thread pool, not on the event loop: the context went with the work.
    serving = [e for e in lines if e["logger"].endswith("registry") and "mood" in e["message"]]
    assert serving and all(e["request_id"] == "add-mood-1" for e in serving), lines
    assert all(set(e) >= {"time", "level", "logger", "message", "request_id"} for e in lines)
    # Outside any request, lines carry no id.
    logging.getLogger("multitask_serve.test").info("between requests")
    last = json.loads(json_lines.getvalue().splitlines()[-1])
    assert last["message"] == "between requests" and last["request_id"] is None
