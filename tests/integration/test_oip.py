"""Open Inference Protocol (v2) in process: metadata, JSON and binary tensors, errors, metrics."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from tritonclient.http import InferResult

from multitask_serve.service.app import create_app
from tests.conftest import TOPIC_LABELS, make_settings
from tests.factories import TINY_HIDDEN

TEXTS = ["john scored a great goal in the final", "the bank rates fell"]


def infer_body(texts: list[str], **extra: object) -> dict:
    return {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]
    } | extra


def outputs(response) -> dict[str, np.ndarray]:
    """The response's tensors, read by the real client's parser."""
    assert response.status_code == 200, response.text
    header = response.headers.get("inference-header-content-length")
    result = InferResult.from_response_body(
        response.content, header_length=None if header is None else int(header)
    )
    tensors = {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    # BYTES come back as bytes from binary data and as str from JSON: compare them as str.
    return {
        name: np.array([x.decode() if isinstance(x, bytes) else x for x in t], dtype=object)
        if t.dtype == object
        else t
        for name, t in tensors.items()
    }


def oip_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


def test_server_and_model_metadata_describe_every_served_task(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/topic-zs").json()
    assert meta["name"] == "topic-zs" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert shapes == {
        "label": ("BYTES", [-1]),
        "score": ("FP32", [-1]),
        "scores": ("FP32", [-1, len(TOPIC_LABELS)]),
        "truncated": ("BOOL", [-1]),
        "windows": ("INT32", [-1]),
    }
    assert meta["parameters"]["labels"] == list(TOPIC_LABELS)
    embed = client.get("/v2/models/embed/versions/1").json()
    assert embed["outputs"][0] == {
        "name": "embedding",
        "datatype": "FP32",
        "shape": [-1, TINY_HIDDEN],
    }
    assert client.get("/v2/models/embed/ready").json() == {"name": "embed", "ready": True}
    assert client.get("/v2/models/embed/versions/1/ready").status_code == 200


def test_json_inference_answers_what_predict_answers(client):
    got = outputs(client.post("/v2/models/topic-zs/infer", json=infer_body(TEXTS, id="r1")))
    native = client.post("/predict/topic-zs", json={"inputs": TEXTS}).json()["outputs"]
    assert got["label"].tolist() == [o["label"] for o in native]
    assert got["score"].dtype == np.float32
    assert got["score"].tolist() == [np.float32(o["score"]) for o in native]
    expected = [[o["scores"][label] for label in TOPIC_LABELS] for o in native]
    assert np.array_equal(got["scores"].reshape(2, -1), np.array(expected, dtype=np.float32))
    assert got["truncated"].tolist() == [False, False]
    assert got["windows"].tolist() == [1, 1]
    assert (
        client.post("/v2/models/topic-zs/infer", json=infer_body(TEXTS, id="r1")).json()["id"]
        == "r1"
    )

    vectors = outputs(client.post("/v2/models/embed/infer", json=infer_body(TEXTS)))["embedding"]
    native = client.post("/predict/embed", json={"inputs": TEXTS}).json()["outputs"]
    assert np.array_equal(vectors.reshape(2, TINY_HIDDEN), np.array(native, dtype=np.float32))


def test_token_classification_answers_entities_as_json_per_text(client, admin, archives):
    assert (
        client.post("/admin/heads/ner", content=archives["ner"], headers=admin).status_code == 201
    )
    got = outputs(client.post("/v2/models/ner/infer", json=infer_body(TEXTS)))
    native = client.post("/predict/ner", json={"inputs": TEXTS}).json()["outputs"]
    assert [json.loads(e) for e in got["entities"]] == native


def test_binary_tensors_in_and_out(client):
    """The binary extension tritonclient uses by default: length-prefixed BYTES after the JSON."""
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2, 1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    ).encode()
    response = client.post(
        "/v2/models/topic-zs/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.headers["content-type"] == "application/octet-stream"
    got = outputs(response)
    assert set(got) == {"scores", "label"}  # only what was asked for
    native = client.post("/predict/topic-zs", json={"inputs": TEXTS}).json()["outputs"]
    expected = [[o["scores"][label] for label in TOPIC_LABELS] for o in native]
    assert np.array_equal(got["scores"].reshape(2, -1), np.array(expected, dtype=np.float32))
    assert got["label"].tolist() == [o["label"] for o in native]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 400, "not valid JSON"),
        ({"inputs": []}, 400, "exactly one input"),
        (
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
            400,
            "'text'",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
            400,
            "BYTES",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]},
            400,
            "shape",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]},
            400,
            "strings",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]},
            400,
            "empty",
        ),
        (infer_body(["a"], outputs=[{"name": "logits"}]), 400, "no output 'logits'"),
        (infer_body(["a"] * 5), 413, "limit is 4"),
    ],
)
def test_bad_requests_get_protocol_errors(repo, body, status, words):
    app = create_app(make_settings(repo, max_batch_texts=4), CollectorRegistry())
    with TestClient(app) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert words in oip_error(client.post("/v2/models/embed/infer", content=content), status)


def test_unknown_models_versions_and_lengths_are_refused(client):
    assert "nope" in oip_error(client.get("/v2/models/nope"), 404)
    assert "nope" in oip_error(client.post("/v2/models/nope/infer", json=infer_body(["a"])), 404)
    oip_error(client.get("/v2/models/nope/ready"), 404)
    assert "serves version 1" in oip_error(client.get("/v2/models/embed/versions/2"), 404)
    assert oip_error(client.post("/v2/models/embed/versions/2/infer", json=infer_body(["a"])), 404)
    bad_length = {"Inference-Header-Content-Length": "99999"}
    response = client.post("/v2/models/embed/infer", content=b"{}", headers=bad_length)
    assert "does not fit" in oip_error(response, 400)
    truncated = struct.pack("<I", 10) + b"abc"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 7},
                }
            ]
        }
    ).encode()
    response = client.post(
        "/v2/models/embed/infer",
        content=header + truncated,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert "ends inside" in oip_error(response, 400)


def test_a_full_queue_answers_429_with_retry_after(repo):
    with TestClient(create_app(make_settings(repo, max_queued_texts=0), CollectorRegistry())) as c:
        response = c.post("/v2/models/embed/infer", json=infer_body(["a"]))
        assert "queued" in oip_error(response, 429)
        assert response.headers["retry-after"] == "1"


def test_an_oversized_body_is_a_protocol_413_with_or_without_a_declared_length(repo):
    with TestClient(create_app(make_settings(repo, max_body_bytes=200), CollectorRegistry())) as c:
        body = json.dumps(infer_body(["a" * 500])).encode()
        streamed = c.post("/v2/models/embed/infer", content=iter([body]))  # no length
        assert "exceeds 200 bytes" in oip_error(streamed, 413)
        declared = c.post("/v2/models/embed/infer", content=body)  # refused before it is read
        assert "exceeds 200 bytes" in oip_error(declared, 413)


def test_requests_are_counted_in_flight_while_they_run_and_metrics_per_task(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    metrics, engine = app.state.services.metrics, app.state.services.engine
    value = metrics.registry.get_sample_value
    seen = []
    real = engine.predict_many

    def spying(jobs):
        seen.append(value("mts_requests_in_flight"))
        return real(jobs)

    def failing(jobs):
        raise RuntimeError("inference failed")

    with TestClient(app, raise_server_exceptions=False) as client:
        engine.predict_many = spying
        assert client.post("/v2/models/embed/infer", json=infer_body(["a", "b"])).status_code == 200
        assert client.post("/predict/embed", json={"inputs": "a"}).status_code == 200
        assert seen == [1.0, 1.0]
        assert value("mts_requests_in_flight") == 0.0
        assert value("mts_requests_total", {"task": "embed", "outcome": "ok"}) == 2.0

        engine.predict_many = failing
        assert client.post("/v2/models/embed/infer", json=infer_body(["a"])).status_code == 500
        assert value("mts_requests_in_flight") == 0.0
        assert value("mts_requests_total", {"task": "embed", "outcome": "error"}) == 1.0


def test_every_kind_answers_the_tensors_its_metadata_declares(client, admin, archives):
    for name in ("sentiment", "ner"):
        assert client.post(f"/admin/heads/{name}", content=archives[name], headers=admin).is_success
    for task in ("embed", "topic-zs", "sentiment", "ner"):
        declared = client.get(f"/v2/models/{task}").json()["outputs"]
        answered = client.post(f"/v2/models/{task}/infer", json=infer_body(TEXTS)).json()["outputs"]
        assert [(o["name"], o["datatype"]) for o in answered] == [
            (o["name"], o["datatype"]) for o in declared
        ]
        for got, meta in zip(answered, declared, strict=True):
            assert got["shape"] == [len(TEXTS) if d == -1 else d for d in meta["shape"]]
            assert len(got["data"]) == np.prod(got["shape"])


def test_the_alias_stands_for_the_server_and_a_task_of_its_name_stays_that_task(repo):
    """MTS_OIP_MODEL_ALIAS (KServe's runtime sets the InferenceService's name): ready as the server
    is, metadata with no tensors, inference refused with the way to a task; no versions."""

    def app(**settings: object) -> TestClient:
        return TestClient(create_app(make_settings(repo, **settings), CollectorRegistry()))

    with app(oip_model_alias="mts") as c:
        served = [m["name"] for m in c.post("/v2/repository/index").json()]
        assert c.get("/v2/models/mts/ready").json() == {"name": "mts", "ready": True}
        meta = c.get("/v2/models/mts").json()
        assert meta["name"] == "mts" and meta["inputs"] == meta["outputs"] == []
        assert meta["parameters"] == {"models": len(served)} and "mts" not in served
        refused = oip_error(c.post("/v2/models/mts/infer", json=infer_body(["a"])), 400)
        assert "/v2/models/<task>/infer" in refused
        assert "mts" in oip_error(c.get("/v2/models/mts/versions/1/ready"), 404)
        c.app.state.services.draining.set()  # shutting down: not ready, as /v2/health/ready
        assert oip_error(c.get("/v2/models/mts/ready"), 503)
    with app(oip_model_alias="embed") as c:  # a task's name: the task
        assert c.get("/v2/models/embed").json()["versions"] == ["1"]
        assert "embedding" in outputs(c.post("/v2/models/embed/infer", json=infer_body(["a"])))
    with app() as c:
        assert "mts" in oip_error(c.get("/v2/models/mts/ready"), 404)
