"""TEI (/tei/<task>) and OpenAI (/v1/embeddings, /v1/models) routes in the real app: the same
answers as /predict/<task>, each protocol's error bodies and statuses, and the shared limits."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from tests.conftest import ADMIN_TOKEN, TOPIC_LABELS, make_settings
from tests.integration.test_inflight_limit import Held

TEXTS = ["john scored a great goal in the final", "the bank rates fell"]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def loaded(client: TestClient, archives) -> TestClient:
    for task in ("sentiment", "ner"):
        answer = client.post(f"/admin/heads/{task}", content=archives[task], headers=ADMIN)
        assert answer.is_success, answer.text
    return client


def native(client: TestClient, task: str, texts: list[str]) -> list:
    answer = client.post(f"/predict/{task}", json={"inputs": texts})
    assert answer.status_code == 200, answer.text
    return answer.json()["outputs"]


def unit(vector: list[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_tei_embed_and_root_equal_the_native_embeddings(client: TestClient):
    expected = [unit(v) for v in native(client, "embed", TEXTS)]
    for path in ("/tei/embed/embed", "/tei/embed"):
        got = client.post(path, json={"inputs": TEXTS})
        assert got.status_code == 200, got.text
        assert np.allclose(got.json(), expected, atol=1e-6)
    one = client.post("/tei/embed/embed", json={"inputs": TEXTS[0]}).json()
    assert len(one) == 1 and np.allclose(one[0], expected[0], atol=1e-6)
    raw = client.post("/tei/embed/embed", json={"inputs": TEXTS, "normalize": False}).json()
    assert np.allclose(raw, native(client, "embed", TEXTS), atol=1e-6)


def test_tei_predict_sorted_label_scores(loaded: TestClient):
    for task in ("sentiment", "topic-zs"):
        expected = native(loaded, task, TEXTS)
        rows = loaded.post(f"/tei/{task}/predict", json={"inputs": TEXTS}).json()
        for row, out in zip(rows, expected, strict=True):
            assert [p["score"] for p in row] == sorted((p["score"] for p in row), reverse=True)
            assert row[0]["label"] == out["label"]
            assert {p["label"]: p["score"] for p in row} == pytest.approx(out["scores"], abs=1e-6)
        single = loaded.post(f"/tei/{task}/predict", json={"inputs": TEXTS[0]}).json()
        assert isinstance(single[0], dict) and single[0]["label"] == expected[0]["label"]
        # The root route answers one list per text, the shape huggingface_hub reads.
        root = loaded.post(f"/tei/{task}", json={"inputs": TEXTS[0], "parameters": {}}).json()
        assert root == [single]
    assert set(TOPIC_LABELS) == {p["label"] for p in rows[0]}


def test_tei_root_token_classification(loaded: TestClient):
    expected = native(loaded, "ner", TEXTS)
    rows = loaded.post("/tei/ner", json={"inputs": TEXTS}).json()
    for row, out in zip(rows, expected, strict=True):
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in row] == [
            (e["entity"], e["text"], e["start"], e["end"]) for e in out
        ]


def test_tei_tokenize_and_info(loaded: TestClient):
    tokens = loaded.post("/tei/embed/tokenize", json={"inputs": "hello world"}).json()
    assert len(tokens) == 1
    words = [t for t in tokens[0] if not t["special"]]
    assert all("hello world"[t["start"] : t["stop"]] == t["text"] for t in words)
    assert tokens[0][0]["special"] and tokens[0][0]["start"] is None
    bare = loaded.post(
        "/tei/embed/tokenize", json={"inputs": ["hello world"], "add_special_tokens": False}
    ).json()
    assert bare == [words]
    info = loaded.get("/tei/sentiment/info").json()
    assert info["model_id"] == "sentiment"
    assert info["model_type"]["classifier"]["id2label"] == {
        "0": "negative",
        "1": "neutral",
        "2": "positive",
    }
    assert "embedding" in loaded.get("/tei/embed/info").json()["model_type"]


# TEI's answer per case, from its router: ErrorType -> status in router/src/http/server.rs
# (Empty 400, Validation 413, Tokenizer 422, Backend 424, Overloaded 429, Unhealthy 503), the
# empty-batch and batch-size checks of each route, and core/src/tokenization.rs (an empty text;
# a text over the maximum length without truncate). error_type is the variant name as serde
# writes it. An unknown task and a malformed body have no TEI answer of their own: 404 and 422.
@pytest.mark.parametrize(
    ("path", "body", "status", "error_type"),
    [
        ("/tei/embed/embed", {"inputs": []}, 400, "Empty"),
        ("/tei/embed/embed", {"inputs": ""}, 400, "Empty"),
        ("/tei/embed/embed", {"inputs": ["a", ""]}, 400, "Empty"),
        ("/tei/embed", {"inputs": []}, 400, "Empty"),
        ("/tei/topic-zs/predict", {"inputs": []}, 400, "Empty"),
        ("/tei/embed/tokenize", {"inputs": []}, 400, "Empty"),
        ("/tei/embed/tokenize", {"inputs": ""}, 400, "Empty"),
        ("/tei/embed/embed", {"inputs": ["x"] * 65}, 413, "Validation"),
        ("/tei/topic-zs/predict", {"inputs": ["x"] * 65}, 413, "Validation"),
        ("/tei/embed/tokenize", {"inputs": ["x"] * 65}, 413, "Validation"),
        ("/tei/embed/embed", {"inputs": "word " * 5000}, 413, "Validation"),
        ("/tei/topic-zs", {"inputs": "word " * 5000, "truncate": False}, 413, "Validation"),
        ("/tei/embed/predict", {"inputs": "x"}, 424, "Backend"),
        ("/tei/topic-zs/embed", {"inputs": "x"}, 424, "Backend"),
        ("/tei/topic-zs/predict", {"inputs": "x", "raw_scores": True}, 424, "Backend"),
        ("/tei/nope/embed", {"inputs": "x"}, 404, "Validation"),
        ("/tei/embed/embed", {"nope": 1}, 422, "Validation"),
    ],
)
def test_tei_errors(client: TestClient, path, body, status, error_type):
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "error_type"}
    assert answer.json()["error_type"] == error_type
    assert answer.json()["error"]


def test_tei_lone_surrogate_is_refused_as_invalid(client: TestClient):
    # JSON may escape a lone UTF-16 surrogate; it is not text (TEI's JSON parser refuses it too).
    body = b'{"inputs": "\\ud800"}'
    json_type = {"content-type": "application/json"}
    answer = client.post("/tei/embed/embed", content=body, headers=json_type)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error_type"] == "Validation"


def test_tei_text_of_spaces_is_not_empty(client: TestClient):
    # TEI refuses only a text with no characters; one that tokenizes to nothing but the special
    # tokens is served.
    answer = client.post("/tei/embed/embed", json={"inputs": [" "]})
    assert answer.status_code == 200, answer.text


def test_overloaded_tei_and_openai_routes_answer_429_in_their_own_form(repo):
    app = create_app(make_settings(repo, max_in_flight_requests=1), CollectorRegistry())
    with TestClient(app) as client:
        held = Held(client)
        try:
            first = held.post("/predict/embed", {"inputs": "x"})  # fills the bound
            tei = client.post("/tei/embed", json={"inputs": "x"})
            oa = client.post("/v1/embeddings", json={"model": "embed", "input": "x"})
        finally:
            held.release.set()
            held.pool.shutdown(wait=True)
        assert first.result().status_code == 200
    assert tei.status_code == 429, tei.text
    assert tei.json()["error_type"] == "Overloaded" and tei.headers["Retry-After"] == "1"
    assert oa.status_code == 429, oa.text
    assert oa.json()["error"]["code"] == "overloaded" and oa.headers["Retry-After"] == "1"


def test_tei_truncate_cuts_long_texts(client: TestClient):
    answer = client.post("/tei/embed/embed", json={"inputs": "word " * 5000, "truncate": True})
    assert answer.status_code == 200 and len(answer.json()) == 1


def test_openai_embeddings_equal_the_native_embeddings(client: TestClient):
    expected = [unit(v) for v in native(client, "embed", TEXTS)]
    body = client.post("/v1/embeddings", json={"model": "embed", "input": TEXTS}).json()
    assert body["object"] == "list" and body["model"] == "embed"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert np.allclose([d["embedding"] for d in body["data"]], expected, atol=1e-6)
    tokens = client.post("/tei/embed/tokenize", json={"inputs": TEXTS}).json()
    count = sum(len(t) for t in tokens)
    assert body["usage"] == {"prompt_tokens": count, "total_tokens": count}
    b64 = client.post(
        "/v1/embeddings", json={"model": "embed", "input": TEXTS[0], "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, expected[0], atol=1e-6)
    assert math.isclose(float(np.linalg.norm(decoded)), 1.0, abs_tol=1e-5)
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["embed"]


# OpenAI answers a request it cannot serve as sent with 400 invalid_request_error (an empty
# input is "'$.input' is invalid"), and an unknown model with 404, code model_not_found.
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "topic-zs", "input": "x"}, 400, "invalid_input"),
        ({"model": "nope", "input": "x"}, 404, "model_not_found"),
        ({"model": "embed", "input": []}, 400, "invalid_input"),
        ({"model": "embed", "input": ""}, 400, "invalid_input"),
        ({"model": "embed", "input": ["a", ""]}, 400, "invalid_input"),
        ({"model": "embed", "input": "x", "encoding_format": "int8"}, 400, "invalid_input"),
        ({"model": "embed", "input": ["x"] * 65}, 400, "too_large"),
        ({"input": "x"}, 400, "invalid_input"),
    ],
)
def test_openai_errors(client: TestClient, body, status, code):
    answer = client.post("/v1/embeddings", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code


def test_compatible_routes_share_the_body_limit(repo):
    app = create_app(make_settings(repo, max_body_bytes=1000), CollectorRegistry())
    with TestClient(app) as client:
        tei = client.post("/tei/embed/embed", json={"inputs": "x" * 5000})
        assert tei.status_code == 413 and tei.json()["error_type"] == "Validation"
        oa = client.post("/v1/embeddings", json={"model": "embed", "input": "x" * 5000})
        assert oa.status_code == 400 and oa.json()["error"]["code"] == "too_large"
