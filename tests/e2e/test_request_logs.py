"""A real ``mts serve`` with MTS_LOG_FORMAT=json: every line of its log is a JSON object, the
lines of a request name its X-Request-ID, and its access line (the app's, not uvicorn's) names the
route's template, the tasks, the status and the duration."""

from __future__ import annotations

import json
import re

import httpx

from support.servers import serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_json_log_lines_carry_the_request_id_and_the_access_fields(repo, tmp_path):
    log = tmp_path / "server.log"
    with serving(repo, log, {**SERVER_ENV, "MTS_LOG_FORMAT": "json"}) as url:
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
            f"{url}/admin/heads/mood/zero-shot",
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
    # Start-up lines belong to no request.
    assert any(e["request_id"] is None and "heads served" in e["message"] for e in entries)
    assert ADMIN_TOKEN not in log.read_text()
