"""The clients users already have, against a real ``mts serve``: huggingface_hub's
``InferenceClient`` on the TEI routes (``model="<base>/tei/<task>"``) and the ``openai`` SDK on
``/v1``. Their answers equal the native ``/predict/<task>`` answers for the same texts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from support.servers import serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV

TEXTS = ["john scored a great goal in the final", "the bank rates fell"]


def unit(vector: list[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_real_clients_answer_as_the_native_route(repo: Path, tmp_path: Path, archives):
    with serving(repo, tmp_path / "server.log", SERVER_ENV) as base:
        with httpx.Client(base_url=base, timeout=30) as http:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            for task in ("sentiment", "ner"):
                assert http.post(f"/admin/heads/{task}", content=archives[task], headers=admin)
            native = {
                task: [
                    http.post(f"/predict/{task}", json={"inputs": text}).json()["outputs"]
                    for text in TEXTS
                ]
                for task in ("embed", "sentiment", "topic-zs", "ner")
            }

        hf = InferenceClient(token="x")  # sent as a bearer token; /tei ignores it
        for i, text in enumerate(TEXTS):
            vector = hf.feature_extraction(text, model=f"{base}/tei/embed")
            assert vector.shape == (1, len(native["embed"][i]))
            assert np.allclose(vector[0], unit(native["embed"][i]), atol=1e-5)
            raw = hf.feature_extraction(text, model=f"{base}/tei/embed", normalize=False)
            assert np.allclose(raw[0], native["embed"][i], atol=1e-5)

            for task in ("sentiment", "topic-zs"):
                got = hf.text_classification(text, model=f"{base}/tei/{task}")
                expected = native[task][i]
                assert got[0].label == expected["label"]
                assert {g.label: g.score for g in got} == pytest.approx(
                    expected["scores"], abs=1e-5
                )
                assert [g.score for g in got] == sorted((g.score for g in got), reverse=True)

            entities = hf.token_classification(text, model=f"{base}/tei/ner")
            assert [(e.entity_group, e.word, e.start, e.end) for e in entities] == [
                (e["entity"], e["text"], e["start"], e["end"]) for e in native["ner"][i]
            ]
            for e, n in zip(entities, native["ner"][i], strict=True):
                assert e.score == pytest.approx(n["score"], abs=1e-5)
        print(
            f"InferenceClient: feature_extraction, text_classification, token_classification "
            f"on {len(TEXTS)} texts equal /predict"
        )

        with pytest.raises(HfHubHTTPError) as refused:
            hf.feature_extraction("x", model=f"{base}/tei/nope")
        assert refused.value.response.status_code == 404
        # TEI's statuses and ErrorTypes reach the client: an empty text is Empty (400), a text
        # over the served length without truncation Validation (413).
        for call, status, error_type in (
            (lambda: hf.feature_extraction("", model=f"{base}/tei/embed"), 400, "Empty"),
            (
                lambda: hf.feature_extraction("word " * 5000, model=f"{base}/tei/embed"),
                413,
                "Validation",
            ),
        ):
            with pytest.raises(HfHubHTTPError) as refused:
                call()
            assert refused.value.response.status_code == status
            assert refused.value.response.json()["error_type"] == error_type

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x")
        # No encoding_format: the SDK asks for base64 and decodes it itself.
        for options in ({}, {"encoding_format": "float"}):
            answer = client.embeddings.create(model="embed", input=TEXTS, **options)
            assert [d.index for d in answer.data] == [0, 1]
            for d, expected in zip(answer.data, native["embed"], strict=True):
                assert np.allclose(d.embedding, unit(expected), atol=1e-5)
            assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(TEXTS)
        b64 = client.embeddings.create(model="embed", input=TEXTS, encoding_format="base64")
        for d, expected in zip(b64.data, native["embed"], strict=True):
            vector = np.frombuffer(base64.b64decode(cast(str, d.embedding)), dtype="<f4")
            assert np.allclose(vector, unit(expected), atol=1e-5)
        one = client.embeddings.create(model="embed", input=TEXTS[0])
        assert np.allclose(one.data[0].embedding, unit(native["embed"][0]), atol=1e-5)
        assert [m.id for m in client.models.list()] == ["embed"]
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="nope", input="x")
        # OpenAI's statuses: a request that cannot be served as sent is a 400 (BadRequestError).
        with pytest.raises(openai.BadRequestError) as wrong_kind:
            client.embeddings.create(model="sentiment", input="x")
        assert "not an embedding task" in wrong_kind.value.message
        with pytest.raises(openai.BadRequestError) as empty:
            client.embeddings.create(model="embed", input=["a", ""])
        assert empty.value.type == "invalid_request_error"
        print("openai: embeddings.create (float, base64), models.list equal /predict")
