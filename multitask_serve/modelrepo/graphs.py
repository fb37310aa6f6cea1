"""Head graphs that need no training, built directly with onnx.helper.

The embedding head (masked mean pooling, then L2 normalisation) and the zero-shot head (the same
embedding, cosine against label-description embeddings fixed at creation, times a scale) are a
handful of ONNX operators. Building them here, without torch, lets the service create a zero-shot
head at run time; export/ checks these exact graphs against a PyTorch reference at build time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from multitask_serve.modelrepo.types import HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT, tap_name

OPSET = 18
# Stated rather than the onnx package's default, which newer onnx releases raise beyond what the
# supported ONNX Runtime builds load (onnx 1.23.1 writes IR 14; onnxruntime-gpu 1.31 reads <= 13).
IR_VERSION = 10
# sentence-transformers clamps the token count at 1e-9 and F.normalize the norm at 1e-12.
_COUNT_EPS = 1e-9
_NORM_EPS = 1e-12
# Cosines live in [-1, 1]; a scale turns them into logits whose softmax is not flat
# (the value sentence-transformers uses for its contrastive losses).
ZERO_SHOT_SCALE = 20.0


def _pooling_nodes(out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    consts = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array(_COUNT_EPS, dtype=np.float32), "count_eps"),
        numpy_helper.from_array(np.array(_NORM_EPS, dtype=np.float32), "norm_eps"),
    ]
    nodes = [
        helper.make_node("Cast", [HEAD_MASK_INPUT], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask_3d"]),
        helper.make_node("Mul", [HEAD_HIDDEN_INPUT, "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_3d", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "count_eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["mean"]),
        helper.make_node("Mul", ["mean", "mean"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis_last"], ["sqsum"], keepdims=1),
        helper.make_node("Sqrt", ["sqsum"], ["norm"]),
        helper.make_node("Max", ["norm", "norm_eps"], ["norm_safe"]),
        helper.make_node("Div", ["mean", "norm_safe"], [out]),
    ]
    return nodes, consts


def _inputs(hidden_size: int) -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info(
            HEAD_HIDDEN_INPUT, TensorProto.FLOAT, ["batch", "seq", hidden_size]
        ),
        helper.make_tensor_value_info(HEAD_MASK_INPUT, TensorProto.INT64, ["batch", "seq"]),
    ]


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="multitask-serve",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def embedding_graph(hidden_size: int) -> bytes:
    """(hidden, attention_mask) -> embedding (batch, hidden), unit length."""
    nodes, consts = _pooling_nodes("embedding")
    graph = helper.make_graph(
        nodes,
        "embedding_head",
        _inputs(hidden_size),
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden_size])],
        initializer=consts,
    )
    return _model(graph)


def zero_shot_graph(label_embeddings: np.ndarray, scale: float = ZERO_SHOT_SCALE) -> bytes:
    """(hidden, attention_mask) -> logits (batch, labels) = scale * cosine(text, label)."""
    labels = np.asarray(label_embeddings, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[0] < 1:
        raise ValueError(f"label embeddings must be (labels, hidden), got {labels.shape}")
    norms = np.linalg.norm(labels, axis=1, keepdims=True)
    unit = labels / np.maximum(norms, _NORM_EPS)
    nodes, consts = _pooling_nodes("embedding")
    consts += [
        numpy_helper.from_array(np.ascontiguousarray(unit.T), "label_matrix"),
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
    ]
    nodes += [
        helper.make_node("MatMul", ["embedding", "label_matrix"], ["cosine"]),
        helper.make_node("Mul", ["cosine", "scale"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "zero_shot_head",
        _inputs(labels.shape[1]),
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels.shape[0]])],
        initializer=consts,
    )
    return _model(graph)


def rows_graph(hidden_size: int) -> bytes:
    """(hidden (batch, seq, width), rows (n,)) -> hidden[rows]: picks a sub-batch on the device.

    With IO binding the trunk's taps stay where the trunk ran; a head that serves only some rows
    of a batch reads them through this graph instead of a round trip through host memory.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", [HEAD_HIDDEN_INPUT, "rows"], ["picked"], axis=0)],
        "pick_rows",
        [
            helper.make_tensor_value_info(
                HEAD_HIDDEN_INPUT, TensorProto.FLOAT, ["batch", "seq", hidden_size]
            ),
            helper.make_tensor_value_info("rows", TensorProto.INT64, ["picked_batch"]),
        ],
        [
            helper.make_tensor_value_info(
                "picked", TensorProto.FLOAT, ["picked_batch", "seq", hidden_size]
            )
        ],
    )
    return _model(graph)


def external_data_locations(model: bytes) -> list[str]:
    """Files a graph's tensors point to instead of holding their data (empty: self-contained).

    A head must be one file: external data would be read from paths the uploader chose. Bytes
    that do not parse as ONNX give an empty list; ONNX Runtime refuses them with its own message.
    """
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(model)
    except Exception:  # DecodeError, whose type depends on the protobuf backend
        return []
    found: list[str] = []

    def tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
        out = [*graph.initializer, *(s.values for s in graph.sparse_initializer)]
        for node in graph.node:
            for attr in node.attribute:
                out += [attr.t, *attr.tensors, *(s.values for s in attr.sparse_tensors)]
                for sub in (attr.g, *attr.graphs):
                    out += tensors(sub)
        return out

    for tensor in tensors(proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
            found.append(f"{tensor.name or '<unnamed>'} -> {where}")
    return found


class NotSegmentable(ValueError):
    """A trunk graph whose layers read more of the trunk's inputs than the attention mask."""


def trunk_segment(
    model: onnx.ModelProto, start: int | None, end: int, mask_input: str = HEAD_MASK_INPUT
) -> onnx.ModelProto:
    """The part of a trunk graph from tap ``start`` (None: the trunk's inputs) to tap ``end``.

    A segment that starts at a tap reads (``tap_<start>``, attention_mask) and yields ``tap_<end>``,
    so a chain of segments computes exactly the nodes of the whole graph, each once: the same
    kernels on the same values, bit-identical taps. Exporters read a batch's dimensions from
    whichever input has them; every trunk input is (batch, seq), so a ``Shape`` of another input is
    read from the mask instead. Any other use of another input is refused (``NotSegmentable``).
    """
    from onnx.utils import Extractor

    inputs = [i.name for i in model.graph.input]
    if start is None:
        return Extractor(model).extract_model(inputs, [tap_name(end)])
    segment = Extractor(model).extract_model([tap_name(start), mask_input], [tap_name(end)])
    others = set(inputs) - {mask_input}
    for node in segment.graph.node:
        if node.op_type == "Shape" and node.input[0] in others:
            node.input[0] = mask_input
        elif others.intersection(node.input):
            raise NotSegmentable(
                f"node {node.name or node.op_type!r} between taps {start} and {end} reads "
                f"{sorted(others.intersection(node.input))}"
            )
    onnx.checker.check_model(segment)
    return segment
