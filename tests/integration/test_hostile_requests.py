"""Hostile prediction requests: each gets a clear 4xx or a well-formed answer, never a 5xx.

Empty lists, too many texts, unknown tasks and oversized bodies have their tests in
test_error_contract.py; long texts in test_service_api.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest

PREDICT = "/predict/embed"


def post(client, path: str, body: object):
    """Sent as ASCII JSON, so that lone surrogates travel as the escapes a client would send."""
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    "inputs",
    [["a", None], [["a"]], [{"text": "a"}], True, 1.5, [1], "\ud800", ["ok", "a\udfffb"]],
    ids=[
        "null item",
        "nested list",
        "object item",
        "boolean",
        "number",
        "number item",
        "lone surrogate",
        "lone surrogate item",
    ],
)
def test_inputs_that_are_not_texts_get_422(client, inputs):
    for path, extra in ((PREDICT, {}), ("/predict", {"tasks": ["embed"]})):
        r = post(client, path, {"inputs": inputs, **extra})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_input"


def test_a_lone_surrogate_is_named_by_its_position(client):
    r = post(client, PREDICT, {"inputs": ["fine", "bad \ud800"]})
    assert "inputs[1] is not valid Unicode" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\x00",
        "a\x00b\x07c",
        "\u202etxet lrt",
        "e\u0301\u0301\u0301",
        "🙂" * 50,
        "\n" * 300,
    ],
    ids=["empty", "space", "nul", "controls", "rtl override", "combining", "emoji", "newlines"],
)
def test_odd_but_valid_texts_are_answered_for_every_kind(client, admin, archives, text):
    client.post("/admin/heads/ner", content=archives["ner"], headers=admin)
    r = client.post(
        "/predict", json={"inputs": [text, "ok"], "tasks": ["embed", "topic-zs", "ner"]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["embed"]["outputs"]) == 2 and body["embed"]["truncated"][0] is False
    assert body["topic-zs"]["outputs"][0]["label"] in {"sport", "business", "politics"}
    for span in body["ner"]["outputs"][0]:  # offsets index the text that was sent
        assert text[span["start"] : span["end"]] == span["text"]


def test_a_text_as_large_as_the_body_limit_is_refused_by_the_window_cap_or_cut_on_request(client):
    size = client.app.state.services.settings.max_body_bytes - 100
    text = "go " * (size // 3)
    r = client.post(PREDICT, json={"inputs": ["ok", text]})
    assert r.status_code == 413 and "inputs[1] needs" in r.json()["error"]["message"]
    r = client.post(PREDICT, json={"inputs": [text], "truncate": True})
    assert r.status_code == 200 and r.json()["truncated"] == [True] and r.json()["windows"] == [1]


def test_an_input_that_breaks_the_engine_fails_only_its_own_request_not_its_batch(client):
    batcher = client.app.state.services.predictor.batcher
    heads = client.app.state.services.registry.loaded(["embed"])

    async def two_requests_one_batch():
        # Past the route's checks: the engine itself fails on this text.
        return await asyncio.gather(
            batcher.submit(heads, ["bad \ud800"]),
            batcher.submit(heads, ["fine"]),
            return_exceptions=True,
        )

    bad, good = client.portal.call(two_requests_one_batch)
    assert isinstance(bad, Exception)
    assert len(good.results["embed"].outputs) == 1
