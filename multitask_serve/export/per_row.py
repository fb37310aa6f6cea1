"""int8 graphs whose answer for a text does not depend on the texts batched with it.

ONNX Runtime's dynamic quantization (``quantize_dynamic``) scales each MatMul's activations by
the largest value in the whole batch, so a text's outputs move with its companions: on the
default heads up to 0.24 of a probability and 57 changed labels over 400 real texts
(BENCHMARKS.md, int8 heads). That breaks the service's first invariant (a text's answer is the
answer it gets alone). Here every row (one token's hidden state) gets its own scale instead:

- weights: int8, symmetric, one scale per output channel (``MatMul`` and ``Gemm`` weights);
  embedding tables (``Gather`` on a weight) int8 with one scale per row, dequantized after the
  lookup;
- activations: at run time, per row, ``scale = max|x| / 127``; ``round(x / scale)`` is stored
  as uint8 shifted by 128 (one zero point for every row, which ``MatMulIntegerToFloat`` takes),
  so the product is exact in int32 and each row's result is scaled by its own ``scale``.

A row's quantization reads only that row, so batching and padding change nothing but the float
rounding the fp32 graph has as well. Attention's score and context products, softmax, LayerNorm
and GELU stay fp32.

**The integer product is u8 x u8, exact on every CPU.** The weights' int8 values are stored as
uint8 shifted by 128 (zero point 128), so ONNX Runtime runs its u8 x u8 kernel. Its u8 x s8 kernel
(int8 weights as stored before) is exact only where the CPU has VNNI (or AMX): on x86 without it
(AVX2, and AVX-512 without VNNI) it multiplies pairs of bytes and adds each pair into a
*saturating* 16-bit sum (``vpmaddubsw``). With activations shifted by 128, one pair of a 255 and
a weight of 127 each is 64,770, twice the int16 range: the default trunk's taps moved up to 0.48
from fp32 there (min cosine 0.984) instead of 0.26 (0.990). Every u8 x u8 kernel widens the bytes
to 16 bits before multiplying (``vpmaddwd``: pairs of products summed in int32; VNNI-INT8's
``vpdpbuud`` and ARM's ``udot`` accumulate in int32 too), so nothing saturates and every CPU
computes the same integers. ``saturating_products`` finds any u8 x s8 product of a graph whose
16-bit pair sums can overflow (an int8 graph made before this change).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MICROSOFT = "com.microsoft"
# |q| <= 127, stored as q + 128 in uint8: 1..255, the same zero point for every row.
LEVELS = 127.0
ZERO_POINT = 128
# A row of zeros has scale 0; this keeps its division finite (its values quantize to 0 anyway).
MIN_SCALE = 1e-12
# The range of the 16-bit sums into which x86's u8 x s8 kernels without VNNI add each pair of
# byte products (``vpmaddubsw`` saturates them there).
INT16_MAX = 32767
UINT8_MAX = 255


def symmetric_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``w`` as int8 with one float32 scale per slice along the other axis (``max|w| / 127``
    over ``axis``): (values, scales)."""
    scale = (np.maximum(np.abs(w).max(axis=axis), MIN_SCALE) / LEVELS).astype(np.float32)
    q = np.round(w / np.expand_dims(scale, axis))
    return np.clip(q, -LEVELS, LEVELS).astype(np.int8), scale


def as_uint8(q: np.ndarray) -> np.ndarray:
    """int8 values as uint8 shifted by the zero point (-127..127 -> 1..255)."""
    return (q.astype(np.int16) + ZERO_POINT).astype(np.uint8)


class _Rewriter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.weights = {t.name: t for t in model.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.added: list[onnx.TensorProto] = []
        self.rows: dict[str, tuple[str, str, str]] = {}
        self.shapes: dict[tuple[str, int], str] = {}
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.axes_as_input = opset >= 18
        self.levels = self.const("per_row/levels", np.array(LEVELS, np.float32))
        self.min_scale = self.const("per_row/min_scale", np.array(MIN_SCALE, np.float32))
        self.one = self.const("per_row/one", np.array(1.0, np.float32))
        # Activations' and weights' zero point alike: both are uint8 holding int8 values + 128.
        self.zero_point = self.const("per_row/zero_point", np.array(ZERO_POINT, np.uint8))
        self.last = self.const("per_row/last", np.array([-1], np.int64))
        self.first = self.const("per_row/first", np.array([0], np.int64))

    def const(self, name: str, value: np.ndarray) -> str:
        self.added.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        domain = MICROSOFT if op == "MatMulIntegerToFloat" else ""
        self.nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attrs))
        return output

    def weight(self, name: str) -> np.ndarray | None:
        tensor = self.weights.get(name)
        if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
            return None
        return numpy_helper.to_array(tensor)

    def quantized_rows(self, x: str, width: int) -> tuple[str, str, str]:
        """(uint8 rows [M, K], their scales [M, 1], x's shape but its last axis) for activation
        ``x``; made once per tensor, so Q, K and V share the quantization of their common input."""
        if x not in self.rows:
            p = f"per_row/rows/{x}"
            shape = self.node("Shape", [x], f"{p}/shape")
            lead = self.node("Slice", [shape, self.first, self.last], f"{p}/lead")
            width_c = self.const(f"{p}/width", np.array([-1, width], np.int64))
            rows = self.node("Reshape", [x, width_c], f"{p}/rows")
            magnitude = self.node("Abs", [rows], f"{p}/abs")
            if self.axes_as_input:
                peak = self.node("ReduceMax", [magnitude, self.last], f"{p}/peak", keepdims=1)
            else:
                peak = self.node("ReduceMax", [magnitude], f"{p}/peak", axes=[-1], keepdims=1)
            peak = self.node("Max", [peak, self.min_scale], f"{p}/peak_nonzero")
            scale = self.node("Div", [peak, self.levels], f"{p}/scale")
            flat = self.node("Reshape", [scale, self.last], f"{p}/scale_flat")
            count = self.node("Shape", [flat], f"{p}/count")
            zero_points = f"{p}/zero_points"
            self.nodes.append(
                helper.make_node(
                    "ConstantOfShape",
                    [count],
                    [zero_points],
                    value=numpy_helper.from_array(np.array([ZERO_POINT], np.uint8)),
                )
            )
            q = self.node("QuantizeLinear", [rows, flat, zero_points], f"{p}/q", axis=0)
            self.rows[x] = (q, scale, lead)
        return self.rows[x]

    def out_shape(self, x: str, lead: str, channels: int) -> str:
        """x's shape with ``channels`` for its last axis; made once per (x, channels)."""
        if (x, channels) not in self.shapes:
            p = f"per_row/shapes/{x}/{channels}"
            size = self.const(f"{p}/channels", np.array([channels], np.int64))
            self.shapes[x, channels] = self.node("Concat", [lead, size], p, axis=0)
        return self.shapes[x, channels]

    def matmul(self, x: str, w: np.ndarray, out: str, bias: str | None) -> None:
        """``out = x @ w (+ bias)`` with int8 weights and per-row int8 activations."""
        width, channels = w.shape
        w_q, channel_scale = symmetric_int8(w, axis=0)
        p = f"per_row/matmul/{out}"
        q, row_scale, lead = self.quantized_rows(x, width)
        # uint8 weights (int8 + 128): ONNX Runtime's u8 x u8 kernel, exact on every CPU.
        weights = self.const(f"{p}/w", as_uint8(w_q))
        scales = self.const(f"{p}/w_scale", channel_scale)
        product = self.node(
            "MatMulIntegerToFloat",
            [q, weights, self.one, scales, self.zero_point, self.zero_point],
            f"{p}/product",
        )
        scaled = self.node("Mul", [product, row_scale], f"{p}/scaled")
        out_shape = self.out_shape(x, lead, channels)
        if bias is None:
            self.node("Reshape", [scaled, out_shape], out)
        else:
            shaped = self.node("Reshape", [scaled, out_shape], f"{p}/shaped")
            self.node("Add", [shaped, bias], out)

    def gather(self, table: np.ndarray, indices: str, out: str) -> None:
        """An embedding lookup on an int8 table with one scale per row."""
        t_q, row_scale = symmetric_int8(table, axis=1)
        p = f"per_row/gather/{out}"
        rows = self.node("Gather", [self.const(f"{p}/table", t_q), indices], f"{p}/rows", axis=0)
        scales = self.const(f"{p}/row_scale", row_scale[:, None])
        picked = self.node("Gather", [scales, indices], f"{p}/scales", axis=0)
        values = self.node("Cast", [rows], f"{p}/values", to=TensorProto.FLOAT)
        self.node("Mul", [values, picked], out)

    def rewrite(self, node: onnx.NodeProto) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul" and node.input[0] not in self.weights:
            w = self.weight(node.input[1])
            if w is not None:
                self.matmul(node.input[0], w, node.output[0], None)
                return True
        if node.op_type == "Gemm" and node.input[0] not in self.weights:
            w = self.weight(node.input[1])
            plain = not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0
            plain = plain and attrs.get("beta", 1.0) == 1.0
            if w is not None and plain:
                bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
                w = w.T if attrs.get("transB", 0) else w
                self.matmul(node.input[0], w, node.output[0], bias)
                return True
        if node.op_type == "Gather" and attrs.get("axis", 0) == 0:
            table = self.weight(node.input[0])
            if table is not None and node.input[1] not in self.weights:
                self.gather(table, node.input[1], node.output[0])
                return True
        return False


def quantize_per_row(model: bytes) -> bytes:
    """The int8 copy of a float graph: every weight MatMul/Gemm and embedding table (above)."""
    proto = onnx.load_from_string(model)
    rewriter = _Rewriter(proto)
    for node in proto.graph.node:
        if not rewriter.rewrite(node):
            rewriter.nodes.append(node)
    graph = proto.graph
    del graph.node[:]
    graph.node.extend(rewriter.nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in [*graph.initializer, *rewriter.added] if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MICROSOFT for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MICROSOFT, 1))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def worst_pair_sum(weights: np.ndarray) -> int:
    """The largest ``|a[k] w[k, n] + a[k+1] w[k+1, n]|`` for uint8 ``a`` (0..255) over the int8
    ``weights`` [K, N]: what a u8 x s8 kernel without VNNI must hold in 16 bits. ONNX Runtime's
    AVX2 and AVX-512 kernels pair consecutive rows of the weights (tests/unit/test_per_row.py
    checks its outputs against that arithmetic)."""
    w = np.abs(weights.astype(np.int64))
    if w.shape[0] % 2:
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int64)])
    pairs = w[0::2] + w[1::2]
    return int(UINT8_MAX * pairs.max()) if pairs.size else 0


def saturating_products(model: bytes) -> list[str]:
    """The integer MatMuls of ``model`` whose u8 x s8 product can leave the 16-bit pair sums of
    x86's kernels without VNNI, so that their outputs differ by CPU (by their output names).
    Empty for every graph made here now; not for int8 graphs made before u8 x u8 weights."""
    proto = onnx.load_from_string(model)
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type == "MatMulIntegerToFloat":
            a_zero_point = node.input[4] if len(node.input) > 4 else ""
        elif node.op_type == "MatMulInteger":
            a_zero_point = node.input[2] if len(node.input) > 2 else ""
        else:
            continue
        w = values.get(node.input[1])
        signed_a = a_zero_point in values and values[a_zero_point].dtype == np.int8
        if w is None or w.dtype != np.int8 or signed_a:  # u8 x u8, s8 x s8: no 16-bit sums
            continue
        if w.ndim != 2 or worst_pair_sum(w) > INT16_MAX:
            found.append(node.output[0])
    return found


def with_int8_weights(model: bytes) -> bytes:
    """``model`` (made by ``quantize_per_row``) with its weights back in int8 and no weight zero
    point, as the method stored them before: ONNX Runtime then runs its u8 x s8 kernel, which
    saturates on x86 without VNNI. For measuring and testing what that changed, never to serve."""
    proto = onnx.load_from_string(model)
    tensors = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "MatMulIntegerToFloat":
            t = tensors[node.input[1]]
            w = numpy_helper.to_array(t).astype(np.int16) - ZERO_POINT
            t.CopyFrom(numpy_helper.from_array(w.astype(np.int8), t.name))
            del node.input[5:]
    return proto.SerializeToString()
