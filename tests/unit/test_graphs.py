"""The training-free head graphs match a numpy reference, padding included."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from multitask_serve.modelrepo import graphs
from multitask_serve.modelrepo.graphs import ZERO_SHOT_SCALE, embedding_graph, zero_shot_graph


def run(model: bytes, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"hidden": hidden, "attention_mask": mask})[0]


def reference(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def test_embedding_graph_is_masked_mean_then_unit_length():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 16)).astype(np.float32)
    mask = np.ones((3, 7), dtype=np.int64)
    mask[1, 4:] = 0
    got = run(embedding_graph(16), hidden, mask)
    assert np.max(np.abs(got - reference(hidden, mask))) < 1e-6
    # Padding positions do not leak into the embedding.
    hidden[1, 4:] = 1e6
    assert np.max(np.abs(run(embedding_graph(16), hidden, mask)[1] - got[1])) < 1e-6


def test_zero_shot_graph_scores_scaled_cosines():
    rng = np.random.default_rng(1)
    labels = rng.normal(size=(4, 16)).astype(np.float32)
    hidden = rng.normal(size=(2, 5, 16)).astype(np.float32)
    mask = np.ones((2, 5), dtype=np.int64)
    got = run(zero_shot_graph(labels), hidden, mask)
    unit = labels / np.linalg.norm(labels, axis=1, keepdims=True)
    assert np.max(np.abs(got - ZERO_SHOT_SCALE * reference(hidden, mask) @ unit.T)) < 1e-5


def test_built_graphs_state_an_ir_version_every_supported_runtime_loads():
    # onnxruntime-gpu 1.31 reads IR <= 13; onnx's own default moved past it.
    for model in (graphs.embedding_graph(8), graphs.rows_graph(8)):
        assert onnx.load_from_string(model).ir_version == graphs.IR_VERSION <= 13
