"""A real ``mts serve`` with MTS_LOG_FORMAT=json: every line of its log is a JSON object, and the
lines of a request (uvicorn's access line included) name its X-Request-ID."""

from __future__ import annotations

import json
import re

import httpx

from support.servers import serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV


def test_json_log_lines_carry_the_request_id_of_their_request(repo, tmp_path):
    log = tmp_path / "server.log"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with serving(repo, log, {**SERVER_ENV, "MTS_LOG_FORMAT": "json"}) as url:
        given = httpx.post(
            f"{url}/predict/embed", json={"inputs": "hi"}, headers={"X-Request-ID": "must-show-42"}
        )
        assert given.status_code == 200 and given.headers["x-request-id"] == "must-show-42"
        generated = httpx.get(f"{url}/predict-typo").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        added = httpx.post(
            f"{url}/admin/heads/mood/zero-shot",
            json={"labels": ["calm", "angry"]},
            headers={**admin, "X-Request-ID": "add-mood"},
        )
        assert added.status_code == 201, added.text
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, start-up and shutdown too
    assert all({"time", "level", "logger", "message", "request_id"} <= set(e) for e in entries)

    def access(rid: str) -> dict:
        [entry] = [e for e in entries if e["logger"] == "uvicorn.access" and e["request_id"] == rid]
        return entry

    line = next(line for line in lines if '"must-show-42"' in line)
    print(f"\nJSON log line with the request id:\n{line}")
    assert (access("must-show-42")["path"], access("must-show-42")["status"]) == (
        "/predict/embed",
        200,
    )
    assert (access(generated)["path"], access(generated)["status"]) == ("/predict-typo", 404)
    assert access("add-mood")["status"] == 201
    # The head load ran in the load thread pool, and still names the request that asked for it.
    assert any(
        e["request_id"] == "add-mood" and "mood" in e["message"]
        for e in entries
        if e["logger"] != "uvicorn.access"
    )
    # Start-up lines belong to no request.
    assert any(e["request_id"] is None and "heads served" in e["message"] for e in entries)
    assert ADMIN_TOKEN not in log.read_text()
