"""An int8 variant of the trunk: ONNX Runtime dynamic quantization with per-channel weights.

Weights of every MatMul (and the embedding tables) are stored as int8 with one scale per output
channel; activations are quantized per batch at run time, so no calibration data is needed. The
variant is checked against the reference graph on sample texts before it is stored, and recorded
in trunk.json beside the reference, whose fingerprint heads keep binding to (docs/architecture.md).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.quantization import QuantType, quantize_dynamic

from multitask_serve.export.onnx_export import session
from multitask_serve.export.samples import SAMPLE_TEXTS, tokenizer_from_json
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import TrunkSpec, TrunkVariant, trunk_fingerprint

INT8 = "int8"
METHOD = "onnxruntime quantize_dynamic, per-channel int8 weights, uint8 activations"
# Every real token's hidden state at every tap must keep at least this cosine similarity to the
# reference graph's. Measured on all-MiniLM-L6-v2's sample texts: 0.962 for the worst token
# (0.99 on average over real texts); per-tensor weights instead of per-channel reach only 0.74.
MIN_COSINE = 0.95

log = logging.getLogger(__name__)


class QuantizationError(RuntimeError):
    """The quantized graph strays too far from the reference graph."""


def quantize_graph(model: bytes) -> bytes:
    """Dynamic int8 quantization of a graph, per output channel."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        # quantize_dynamic warns that the graph was not pre-processed; its own shape inference
        # is enough for these graphs (every weight MatMul is quantized, see the test).
        quant_log = logging.getLogger("root")
        level = quant_log.level
        quant_log.setLevel(logging.ERROR)
        try:
            quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8)
        finally:
            quant_log.setLevel(level)
        return target.read_bytes()


def compare_taps(
    reference: bytes, variant: bytes, spec: TrunkSpec, tokenizer_json: bytes
) -> tuple[float, float]:
    """(max abs diff, min cosine) between two trunk graphs over every real token of every tap."""
    tokenizer = tokenizer_from_json(tokenizer_json, spec.max_length)
    worst_diff, worst_cos = 0.0, 1.0
    ref, var = session(reference), session(variant)
    for texts in (SAMPLE_TEXTS[:3], SAMPLE_TEXTS[3:]):
        encodings = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {k: v for k, v in feeds.items() if k in spec.input_names}
        real = mask.astype(bool)
        for a, b in zip(ref.run(None, feeds), var.run(None, feeds), strict=True):
            a, b = a[real], b[real]
            worst_diff = max(worst_diff, float(np.abs(a - b).max()))
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            worst_cos = min(worst_cos, float(cos.min()))
    return worst_diff, worst_cos


def quantize_trunk(repo: ModelRepository) -> TrunkSpec:
    """Add an int8 variant of the repository's trunk; returns the updated trunk spec."""
    spec = repo.read_trunk_spec()
    reference = repo.trunk_model_path.read_bytes()
    tokenizer = repo.tokenizer_path.read_bytes()
    model = quantize_graph(reference)
    diff, cosine = compare_taps(reference, model, spec, tokenizer)
    log.info("int8 trunk vs fp32: max abs diff %.3g, min cosine %.4f", diff, cosine)
    if not cosine >= MIN_COSINE:
        raise QuantizationError(
            f"the int8 trunk's taps reach cosine {cosine:.4f} to the fp32 trunk's, below "
            f"{MIN_COSINE}; not stored"
        )
    variant = TrunkVariant(
        file=f"model.{INT8}.onnx",
        fingerprint=trunk_fingerprint(model, tokenizer),
        method=METHOD,
        max_abs_diff=diff,
        min_cosine=cosine,
        versions={"onnxruntime": onnxruntime.__version__},
    )
    return repo.add_trunk_variant(INT8, variant, model)
