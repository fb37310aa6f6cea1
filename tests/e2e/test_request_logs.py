"""A real ``mts serve`` with MTS_LOG_FORMAT=json and MTS_ADMIN_PORT: every line of its log is a
JSON object, the lines of a request name its X-Request-ID, its access line (the app's, not
uvicorn's) names the route's template, the tasks, the status and the duration; and ``/admin/...``
and ``/metrics`` answer on the admin port only."""

from __future__ import annotations

import json
import re

import httpx

from support.servers import free_port, serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_admin_and_metrics_answer_on_the_admin_port_and_404_on_the_inference_port(repo, tmp_path):
    log = tmp_path / "server.log"
    port = free_port()
    env = {**SERVER_ENV, "MTS_LOG_FORMAT": "json", "MTS_ADMIN_PORT": str(port)}
    with serving(repo, log, env) as url:
        admin = f"http://127.0.0.1:{port}"
        # The Must-show: the inference port answers these as paths no route serves.
        unknown = httpx.get(f"{url}/no-such-path")
        for path in ("/metrics", "/admin/heads/embed/versions"):
            hidden = httpx.get(f"{url}{path}", headers=ADMIN)
            assert (hidden.status_code, hidden.json()) == (404, unknown.json()), path
            assert httpx.get(f"{admin}{path}", headers=ADMIN).status_code == 200, path
        assert "mts_http_requests_total" in httpx.get(f"{admin}/metrics").text
        # Inference and the listing are not served on the admin port; probes answer on both.
        refused = httpx.post(f"{admin}/predict/embed", json={"inputs": "hi"})
        assert refused.status_code == 404 and httpx.get(f"{admin}/tasks").status_code == 404
        for probe in ("/healthz", "/readyz"):
            assert httpx.get(f"{url}{probe}").status_code == 200
            assert httpx.get(f"{admin}{probe}").status_code == 200

        given = httpx.post(
            f"{url}/predict/embed", json={"inputs": "hi"}, headers={"X-Request-ID": "must-show-42"}
        )
        assert given.status_code == 200 and given.headers["x-request-id"] == "must-show-42"
        generated = httpx.get(f"{url}/predict-typo").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        several = httpx.post(
            f"{url}/predict",
            json={"inputs": "hi", "tasks": ["topic-zs", "embed"]},
            headers={"X-Request-ID": "two-tasks"},
        )
        assert several.status_code == 200, several.text
        added = httpx.post(
            f"{admin}/admin/heads/mood/zero-shot",
            json={"labels": ["calm", "angry"]},
            headers={**ADMIN, "X-Request-ID": "add-mood"},
        )
        assert added.status_code == 201, added.text
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, start-up and shutdown too
    assert all({"time", "level", "logger", "message", "request_id"} <= set(e) for e in entries)
    assert not [e for e in entries if e["logger"] == "uvicorn.access"]  # ours replace them

    def access(rid: str) -> dict:
        [entry] = [
            e for e in entries if e["logger"] == "multitask_serve.access" and e["request_id"] == rid
        ]
        return entry

    line = next(line for line in lines if '"must-show-42"' in line)
    print(f"\nJSON log line with the request id:\n{line}")
    fields = ("method", "route", "status", "tasks")
    assert [access("must-show-42")[f] for f in fields] == [
        "POST",
        "/predict/{task}",
        200,
        ["embed"],
    ]
    assert [access(generated)[f] for f in fields] == ["GET", "other", 404, []]
    assert access("two-tasks")["tasks"] == ["topic-zs", "embed"]
    assert [access("add-mood")[f] for f in fields] == [
        "POST",
        "/admin/heads/{task}/zero-shot",
        201,
        ["mood"],
    ]
    for rid in ("must-show-42", generated, "two-tasks", "add-mood"):
        assert 0 < access(rid)["duration_ms"] < 60_000
    # The text of the line says the same: readable where the fields are not indexed.
    assert re.fullmatch(
        r"POST /predict/\{task\} 200 \d+\.\d ms tasks=embed", access("must-show-42")["message"]
    )
    # The head load ran in the load thread pool, and still names the request that asked for it.
    assert any(
        e["request_id"] == "add-mood" and "mood" in e["message"]
        for e in entries
        if e["logger"] != "multitask_serve.access"
    )
    # Start-up lines belong to no request; both listeners are announced.
    assert any(e["request_id"] is None and "heads served" in e["message"] for e in entries)
    assert any(
        f"127.0.0.1:{port}" in e["message"] for e in entries if e["logger"] == "uvicorn.error"
    )
    assert ADMIN_TOKEN not in log.read_text()
