"""export/per_row.py on small hand-built graphs: what is quantized, how close it stays to the float
graph, that a row's output depends on that row alone (the property the service relies on), and
that no integer product can saturate on any x86 CPU.

The saturation tests hold on every CPU: ``saturating_u8s8`` reproduces in numpy the arithmetic
of ONNX Runtime's u8 x s8 kernels on x86 without VNNI (each pair of byte products summed into a
saturating int16), checked against ONNX Runtime itself where this CPU runs such a kernel, and the
graphs' own integer products are recomputed with it on real inputs."""

from __future__ import annotations

import collections
import platform

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from multitask_serve.export.per_row import (
    INT16_MAX,
    quantize_per_row,
    saturating_products,
    with_int8_weights,
)

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


# -- integer arithmetic ------------------------------------------------------------------------


def saturating_u8s8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (uint8 [M, K] x int8 [K, N]) as x86's u8 x s8 kernels without VNNI compute it:
    ``vpmaddubsw`` adds the products of bytes k and k+1 into an int16 that saturates, then
    ``vpmaddwd`` / ``vpaddd`` add those sums exactly in int32."""
    k = a.shape[1]
    a = np.pad(a.astype(np.int64), ((0, 0), (0, k % 2)))
    b = np.pad(b.astype(np.int64), ((0, k % 2), (0, 0)))
    pairs = a[:, 0::2, None] * b[None, 0::2, :] + a[:, 1::2, None] * b[None, 1::2, :]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(1)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            line = next(line for line in info if line.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def matmul_integer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Runtime's MatMulInteger of uint8 ``a`` and int8 ``b`` (zero points 0)."""
    nodes = [helper.make_node("MatMulInteger", ["a", "b"], ["y"])]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", b.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", b.shape[1]])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return run_feeds(model.SerializeToString(), {"a": a})[0]


def run_feeds(model: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_the_numpy_kernel_is_onnx_runtimes_where_this_cpu_saturates():
    """The reference is ONNX Runtime's arithmetic: on a CPU without VNNI its u8 x s8 product is
    ``saturating_u8s8`` to the last integer; with VNNI (or AMX) it is the exact product."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 67)).astype(np.uint8)  # odd K: the last byte pairs with 0
    b = rng.integers(-127, 128, (67, 24)).astype(np.int8)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    emulated = saturating_u8s8(a, b)
    assert (emulated != exact).any()  # these inputs do saturate 16-bit pair sums
    got = matmul_integer(a, b)
    flags = cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"u8 x s8 kernels of {platform.machine()} accumulate in int32")
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        np.testing.assert_array_equal(got, exact)  # VNNI: vpdpbusd sums in int32
    else:
        np.testing.assert_array_equal(got, emulated)


def integer_products(model: bytes, feeds: dict[str, np.ndarray]):
    """Each integer MatMul of ``model`` on ``feeds``: (its uint8 activations [M, K] as the
    graph made them, its stored weights as ints, their zero points)."""
    proto = onnx.load_from_string(model)
    tensors = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type == "MatMulIntegerToFloat"]
    inputs = list(dict.fromkeys(n.input[0] for n in nodes))
    proto.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in inputs)
    outputs = dict(
        zip(inputs, run_feeds(proto.SerializeToString(), feeds)[-len(inputs) :], strict=True)
    )
    for n in nodes:
        a_zp = int(tensors[n.input[4]]) if len(n.input) > 4 else 0
        b_zp = int(tensors[n.input[5]]) if len(n.input) > 5 else 0
        yield outputs[n.input[0]], tensors[n.input[1]], a_zp, b_zp


def without_vnni(a: np.ndarray, w: np.ndarray, a_zp: int, w_zp: int) -> np.ndarray:
    """The integer product an x86 CPU without VNNI computes for these operands: u8 x s8 through
    the saturating pair sums (the activations' zero point is taken off afterwards, exactly, as a
    multiple of the weights' column sums); u8 x u8 widened to 16 bits, exact."""
    if a.dtype == np.uint8 and w.dtype == np.int8 and w_zp == 0:
        return saturating_u8s8(a, w) - a_zp * w.astype(np.int64).sum(0)
    return (a.astype(np.int64) - a_zp) @ (w.astype(np.int64) - w_zp)


def assert_exact_on_every_cpu(model: bytes, feeds: dict[str, np.ndarray]) -> int:
    """Each integer product of ``model`` on ``feeds``, as a CPU without VNNI computes it, is the
    exact product (which VNNI computes); returns how many were checked."""
    checked = 0
    for a, w, a_zp, w_zp in integer_products(model, feeds):
        exact = (a.astype(np.int64) - a_zp) @ (w.astype(np.int64) - w_zp)
        assert np.abs(exact).max() < 2**31
        wrong = int((without_vnni(a, w, a_zp, w_zp) != exact).sum())
        assert not wrong, f"{wrong} of {exact.size} sums differ without VNNI (16-bit saturation)"
        checked += 1
    return checked


@pytest.mark.parametrize("opset", [17, 18])
def test_no_integer_product_saturates_on_any_cpu(opset):
    """Every integer product of the int8 graph, recomputed on real inputs with the arithmetic of
    a CPU without VNNI, equals the exact product: its outputs are the same on every CPU."""
    int8 = quantize_per_row(graph(opset))
    ids = {"ids": np.random.default_rng(1).integers(0, VOCAB, (4, 7))}
    assert assert_exact_on_every_cpu(int8, ids) == 2
    assert saturating_products(int8) == []


def test_the_checks_refuse_int8_weights_which_saturate_without_vnni():
    """The graph with int8 weights, as the method stored them before, on any CPU: the pair sums
    of its products leave int16, and on real inputs some do."""
    old = with_int8_weights(quantize_per_row(graph()))
    assert len(saturating_products(old)) == 2
    ids = {"ids": np.random.default_rng(1).integers(0, VOCAB, (4, 7))}
    with pytest.raises(AssertionError, match="differ without VNNI"):
        assert_exact_on_every_cpu(old, ids)


def test_a_graph_whose_pair_sums_stay_in_int16_is_not_flagged():
    """``saturating_products`` bounds the pair sums, not the weights' type: int8 weights of at
    most 64 in magnitude (255 * 128 = 32,640) cannot saturate."""
    proto = onnx.load_from_string(with_int8_weights(quantize_per_row(graph())))
    for t in proto.graph.initializer:
        if t.data_type == TensorProto.INT8 and t.name.startswith("per_row/matmul/"):
            w = numpy_helper.to_array(t).astype(np.int16)
            t.CopyFrom(numpy_helper.from_array((w // 2).astype(np.int8), t.name))
    assert saturating_products(proto.SerializeToString()) == []
