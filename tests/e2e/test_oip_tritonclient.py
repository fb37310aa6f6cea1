"""KServe v2 tooling against a real ``mts serve``: the real ``tritonclient[http]`` client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from support.servers import serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV, TOPIC_LABELS

TEXTS = ["john scored a great goal in the final", "the bank rates fell"]


def text_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    return tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)


def test_tritonclient_reads_metadata_and_infers_every_kind(repo: Path, tmp_path: Path, archives):
    with serving(repo, tmp_path / "server.log", SERVER_ENV) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert http.post("/admin/heads/ner", content=archives["ner"], headers=admin).is_success
            native = {
                task: http.post(f"/predict/{task}", json={"inputs": TEXTS}).json()["outputs"]
                for task in ("topic-zs", "embed", "ner")
            }
            served = [t["task"] for t in http.get("/tasks").json()["tasks"]]
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.get_server_metadata()["name"] == "multitask-serve"
            assert client.is_model_ready("topic-zs") and client.is_model_ready("ner", "1")
            assert not client.is_model_ready("nope")
            meta = client.get_model_metadata("topic-zs")
            assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
            assert meta["parameters"]["labels"] == list(TOPIC_LABELS)

            # The model repository extension's index, as the client asks for it (empty body);
            # filtered and paged by the query.
            index = client.get_model_repository_index()
            assert [m["name"] for m in index] == served == sorted(served)
            assert set(native) <= set(served)
            assert {m["state"] for m in index} == {"READY"}
            assert all(m["parameters"]["loaded"] for m in index)  # no budget: all loaded
            page = client.get_model_repository_index(query_params={"limit": "2"})
            assert [m["name"] for m in page] == served[:2]
            taggers = client.get_model_repository_index(
                query_params={"kind": "token-classification"}
            )
            assert [m["name"] for m in taggers] == ["ner"]

            # The client's defaults: binary tensors in both directions.
            result = client.infer("topic-zs", [text_input(TEXTS)], request_id="r1")
            assert result.get_response()["id"] == "r1"
            labels = [label.decode() for label in result.as_numpy("label")]
            assert labels == [o["label"] for o in native["topic-zs"]]
            expected = [[o["scores"][label] for label in TOPIC_LABELS] for o in native["topic-zs"]]
            assert np.array_equal(result.as_numpy("scores"), np.array(expected, dtype=np.float32))
            assert result.as_numpy("scores").shape == (2, len(TOPIC_LABELS))

            # JSON tensors both ways, one requested output, a pinned version.
            wanted = [triton.InferRequestedOutput("embedding", binary_data=False)]
            result = client.infer("embed", [text_input(TEXTS, False)], "1", outputs=wanted)
            assert [o["name"] for o in result.get_response()["outputs"]] == ["embedding"]
            vectors = result.as_numpy("embedding")
            assert np.array_equal(vectors, np.array(native["embed"], dtype=np.float32))

            entities = client.infer("ner", [text_input(TEXTS)]).as_numpy("entities")
            assert [json.loads(e) for e in entities] == native["ner"]

            with pytest.raises(InferenceServerException, match="unknown task 'nope'") as refused:
                client.infer("nope", [text_input(TEXTS)])
            assert refused.value.status() == "404"
            with pytest.raises(InferenceServerException, match="serves version 1") as refused:
                client.infer("embed", [text_input(TEXTS)], model_version="2")
            assert refused.value.status() == "404"
        finally:
            client.close()
