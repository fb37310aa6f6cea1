"""export/per_row.py on small hand-built graphs: what is quantized, how close it stays to the float
graph, and that a row's output depends on that row alone (the property the service relies on)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from multitask_serve.export.per_row import quantize_per_row

HIDDEN, OUT, VOCAB = 32, 16, 50


def graph(opset: int = 17) -> bytes:
    """ids [B, T] -> embedding lookup -> MatMul + bias -> Relu -> Gemm (transB) of the first
    token -> logits [B, 3]; also the MatMul's output, to check 3-D activations."""
    rng = np.random.default_rng(0)
    weights = {
        "table": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
        "w": rng.standard_normal((HIDDEN, OUT)).astype(np.float32) / 4,
        "b": rng.standard_normal(OUT).astype(np.float32),
        "c": rng.standard_normal((3, OUT)).astype(np.float32),  # Gemm with transB=1
        "cb": rng.standard_normal(3).astype(np.float32),
        "first": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "axis1": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
        helper.make_node("MatMul", ["emb", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["act"]),
        helper.make_node("Slice", ["act", "first", "one", "axis1"], ["cls3"]),
        helper.make_node("Squeeze", ["cls3", "axis1"], ["cls"]),
        helper.make_node("Gemm", ["cls", "c", "cb"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "T", OUT]),
        ],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def run(model: bytes, ids: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})


@pytest.mark.parametrize("opset", [17, 18])
def test_every_weight_product_and_table_is_int8_and_outputs_stay_close(opset):
    fp32 = graph(opset)
    int8 = quantize_per_row(fp32)
    proto = onnx.load_from_string(int8)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["MatMulIntegerToFloat"] == 2 and ops["MatMul"] == 0 and ops["Gemm"] == 0
    assert not [
        t.name
        for t in proto.graph.initializer
        if t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) > 1
    ]
    assert len(int8) < len(fp32)
    ids = np.random.default_rng(1).integers(0, VOCAB, (4, 7))
    for a, b in zip(run(fp32, ids), run(int8, ids), strict=True):
        # 8 bits per value: well within a few percent of each output's range.
        assert np.abs(a - b).max() <= 0.03 * np.abs(a).max()


def test_a_rows_output_does_not_depend_on_the_rows_beside_it():
    int8 = quantize_per_row(graph())
    rng = np.random.default_rng(2)
    alone = rng.integers(0, VOCAB, (1, 7))
    for _ in range(5):
        # Companions of other magnitudes: per-batch scales would move the first row's outputs.
        batch = np.concatenate([alone, rng.integers(0, VOCAB, (5, 7))])
        logits, hidden = run(int8, batch)
        logits_alone, hidden_alone = run(int8, alone)
        np.testing.assert_array_equal(logits[:1], logits_alone)
        np.testing.assert_array_equal(hidden[:1], hidden_alone)


def test_a_row_of_zeros_stays_finite():
    model = quantize_per_row(graph())
    proto = onnx.load_from_string(model)
    # The embedding row of token 0 set to zeros: its activation scale would be 0.
    for t in proto.graph.initializer:
        if t.name.endswith("/table"):
            table = numpy_helper.to_array(t).copy()
            table[0] = 0
            t.CopyFrom(numpy_helper.from_array(table, t.name))
    logits, hidden = run(proto.SerializeToString(), np.zeros((2, 3), np.int64))
    assert np.isfinite(logits).all() and np.isfinite(hidden).all()
