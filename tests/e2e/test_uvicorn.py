"""A real ``mts serve`` process on loopback, spoken to over real HTTP."""

from __future__ import annotations

import httpx

from support.servers import serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV


def test_served_process_answers_predictions_and_hot_adds_over_http(server, archives):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server, timeout=30) as http:
        embed = http.post("/predict/embed", json={"inputs": "hello"})
        assert embed.status_code == 200 and len(embed.json()["outputs"]) > 0
        zs = http.post("/predict/topic-zs", json={"inputs": ["a goal in the match"]})
        assert zs.status_code == 200 and zs.json()["outputs"][0]["label"]

        before = http.post("/predict/topic-zs", json={"inputs": ["a", "b c"]}).json()["outputs"]
        added = http.post("/admin/heads/ner", content=archives["ner"], headers=admin)
        assert added.status_code == 201, added.text
        assert http.post("/predict/ner", json={"inputs": "john lives in paris"}).status_code == 200
        refused = http.post("/admin/heads/sentiment", content=archives["foreign"], headers=admin)
        assert refused.status_code == 409
        after = http.post("/predict/topic-zs", json={"inputs": ["a", "b c"]}).json()["outputs"]
        assert after == before

        tasks = {t["task"] for t in http.get("/tasks").json()["tasks"]}
        assert tasks == {"embed", "topic-zs", "ner"}
        metrics = http.get("/metrics").text
        assert 'mts_requests_total{outcome="ok",task="ner"} 1.0' in metrics


def test_admin_tokens_never_reach_the_server_log_even_at_debug_level(repo, tmp_path):
    log = tmp_path / "debug.log"
    wrong = "wrong-token-that-must-not-be-logged"
    with serving(repo, log, {**SERVER_ENV, "MTS_LOG_LEVEL": "debug"}) as url:
        for token in (ADMIN_TOKEN, wrong):
            httpx.post(
                f"{url}/admin/heads/mood/zero-shot?replace=true",
                json={"labels": ["a", "b"]},
                headers={"Authorization": f"Bearer {token}"},
            )
    text = log.read_text()
    # requests were logged (the route's template and the task), without their headers
    assert "POST /admin/heads/{task}/zero-shot 201" in text and "tasks=mood" in text
    assert "POST /admin/heads/{task}/zero-shot 401" in text
    assert ADMIN_TOKEN not in text and wrong not in text
