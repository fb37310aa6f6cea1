"""int8 graphs of the trunk and of trained heads (``export/per_row.py``).

Weights of every MatMul are stored as int8 with one scale per output channel (the trunk's
embedding tables one per row); activations are quantized per row (per token) at run time, so no
calibration data is needed and a text's answer does not depend on the texts batched with it.

- The trunk's variant is checked against the reference graph on sample texts before it is stored,
  and recorded in trunk.json beside the reference, whose fingerprint heads keep binding to
  (docs/architecture.md).
- A trained head's int8 copy quantizes the head's own layers and classifier. It keeps the head's
  signature (float32 taps in, float32 logits out) and trunk fingerprint; head.json records
  ``precision: int8`` and how far its outputs moved from the fp32 graph on the sample taps, which
  must stay within ``MAX_PROBABILITY_CHANGE``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime

from multitask_serve.export.onnx_export import session
from multitask_serve.export.per_row import quantize_per_row, saturating_products
from multitask_serve.export.samples import SAMPLE_TEXTS, tokenizer_from_json
from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError
from multitask_serve.modelrepo.types import (
    EXACT_INTEGER_PRODUCTS,
    HEAD_HIDDEN_INPUT,
    HEAD_MASK_INPUT,
    REFERENCE_PRECISION,
    HeadSpec,
    TrunkSpec,
    TrunkVariant,
    tap_name,
    trunk_fingerprint,
)

INT8 = "int8"
# The methods' names say how the integer products run: an int8 graph made before u8 x u8 weights
# ("per-channel int8 weights, ...") saturates on x86 without VNNI, and ``mts quantize`` replaces
# a trunk variant whose method is not this one.
METHOD = (
    f"per-row int8: per-channel int8 weights stored as uint8 ({EXACT_INTEGER_PRODUCTS}), int8 "
    "activations scaled per row at run time"
)
# Every real token's hidden state at every tap must keep at least this cosine similarity to the
# reference graph's. Measured on all-MiniLM-L6-v2's sample texts: 0.990 for the worst token with
# per-row activation scales (0.962 with per-batch ones); per-tensor weights reached only 0.74.
MIN_COSINE = 0.95

log = logging.getLogger(__name__)


class QuantizationError(RuntimeError):
    """The quantized graph strays too far from the reference graph."""


def quantize_graph(model: bytes) -> bytes:
    """The int8 copy of a graph: per-channel weights, per-row activations (``per_row``), whose
    integer products cannot saturate on any CPU."""
    quantized = quantize_per_row(model)
    saturating = saturating_products(quantized)
    if saturating:  # per_row makes none; this keeps any later change from storing one
        raise QuantizationError(
            f"{len(saturating)} integer products can saturate on CPUs without VNNI "
            f"({', '.join(saturating[:3])}); not stored"
        )
    return quantized


def sample_feeds(spec: TrunkSpec, tokenizer_json: bytes) -> Iterator[dict[str, np.ndarray]]:
    """The trunk's inputs for the sample texts, in two padded batches of different shapes."""
    tokenizer = tokenizer_from_json(tokenizer_json, spec.max_length)
    for texts in (SAMPLE_TEXTS[:3], SAMPLE_TEXTS[3:]):
        encodings = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        yield {k: v for k, v in feeds.items() if k in spec.input_names}


def compare_taps(
    reference: bytes, variant: bytes, spec: TrunkSpec, tokenizer_json: bytes
) -> tuple[float, float]:
    """(max abs diff, min cosine) between two trunk graphs over every real token of every tap."""
    worst_diff, worst_cos = 0.0, 1.0
    ref, var = session(reference), session(variant)
    for feeds in sample_feeds(spec, tokenizer_json):
        real = feeds["attention_mask"].astype(bool)
        for a, b in zip(ref.run(None, feeds), var.run(None, feeds), strict=True):
            a, b = a[real], b[real]
            worst_diff = max(worst_diff, float(np.abs(a - b).max()))
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            worst_cos = min(worst_cos, float(cos.min()))
    return worst_diff, worst_cos


def quantize_trunk(repo: ModelRepository) -> TrunkSpec:
    """Add an int8 variant of the repository's trunk; returns the updated trunk spec."""
    spec = repo.read_trunk_spec()
    stored = spec.variants.get(INT8)
    if stored is not None and stored.method == METHOD:
        raise RepositoryError(f"{repo.trunk_dir} already has an {INT8!r} trunk variant")
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
    # A variant made by an earlier method (per-batch activation scales) is replaced; the new
    # graph takes a file name of its own so that trunk.json always names a whole graph.
    file = f"model.{INT8}.onnx"
    if stored is not None and stored.file == file:
        file = f"model.{INT8}.{trunk_fingerprint(model, tokenizer)[:12]}.onnx"
    variant = TrunkVariant(
        file=file,
        fingerprint=trunk_fingerprint(model, tokenizer),
        method=METHOD,
        max_abs_diff=diff,
        min_cosine=cosine,
        versions={"onnxruntime": onnxruntime.__version__},
    )
    if stored is not None:
        log.info("replacing the int8 trunk made by %r", stored.method)
    return repo.add_trunk_variant(INT8, variant, model, replace=stored is not None)


# -- heads -------------------------------------------------------------------------------------
# A head's int8 copy may move its logits, but not its answers: over the sample taps no class (or
# per-token tag) probability may move by more than this from the fp32 graph's. Measured on the
# default heads (sentiment top-2, NER top-4): 0.016 and 0.065 on the sample taps, 0.069 and 0.082
# at worst over their whole test splits (BENCHMARKS.md, int8 heads).
MAX_PROBABILITY_CHANGE = 0.15
HEAD_METHOD = (
    "per-row int8 of the head's own MatMuls: per-channel weights stored as uint8 "
    f"({EXACT_INTEGER_PRODUCTS}), per-row activations"
)

# (hidden at the head's branch tap, attention_mask): what a head graph is fed.
HeadSample = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class HeadParity:
    """How far a head variant's outputs are from its fp32 graph's, over real rows or tokens."""

    logits_max_abs_diff: float
    probability_max_abs_diff: float
    # Share of texts (per-token heads: real tokens) whose highest-scoring label changed.
    changed_predictions: float


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def compare_heads(
    reference: bytes, variant: bytes, output: str, samples: Sequence[HeadSample]
) -> HeadParity:
    """Run both head graphs on the same taps; padding positions of per-token outputs are ignored."""
    ref, var = session(reference), session(variant)
    a_rows, b_rows = [], []
    for hidden, mask in samples:
        feeds = {HEAD_HIDDEN_INPUT: hidden, HEAD_MASK_INPUT: mask}
        a, b = ref.run([output], feeds)[0], var.run([output], feeds)[0]
        if a.ndim == 3:  # per token: keep the real tokens only
            a, b = a[mask.astype(bool)], b[mask.astype(bool)]
        a_rows.append(a)
        b_rows.append(b)
    a, b = np.concatenate(a_rows), np.concatenate(b_rows)
    return HeadParity(
        logits_max_abs_diff=float(np.abs(a - b).max()),
        probability_max_abs_diff=float(np.abs(softmax(a) - softmax(b)).max()),
        changed_predictions=float((a.argmax(-1) != b.argmax(-1)).mean()),
    )


def trunk_head_samples(repo: ModelRepository, layer: int) -> list[HeadSample]:
    """The repository trunk's taps at ``layer`` on the sample texts, with their masks."""
    spec = repo.read_trunk_spec()
    trunk = session(repo.trunk_model_path.read_bytes())
    return [
        (trunk.run([tap_name(layer)], feeds)[0], feeds["attention_mask"])
        for feeds in sample_feeds(spec, repo.tokenizer_path.read_bytes())
    ]


def quantize_head(
    spec: HeadSpec, model: bytes, samples: Sequence[HeadSample]
) -> tuple[HeadSpec, bytes]:
    """The int8 copy of an fp32 trained head, checked against it on ``samples`` (its taps)."""
    if not spec.traits.trained:
        raise QuantizationError(
            f"head {spec.task!r} ({spec.kind}) has no trained weights of its own to quantize"
        )
    if spec.precision != REFERENCE_PRECISION:
        raise QuantizationError(
            f"head {spec.task!r} is already {spec.precision}; quantize its fp32 version"
        )
    quantized = quantize_graph(model)
    parity = compare_heads(model, quantized, spec.output_name, samples)
    log.info(
        "int8 head %s vs fp32: logits max abs diff %.3g, probabilities %.3g, changed %.3f",
        spec.task,
        parity.logits_max_abs_diff,
        parity.probability_max_abs_diff,
        parity.changed_predictions,
    )
    if not parity.probability_max_abs_diff <= MAX_PROBABILITY_CHANGE:
        raise QuantizationError(
            f"the int8 copy of head {spec.task!r} moves a probability by "
            f"{parity.probability_max_abs_diff:.3g} from the fp32 graph's, above "
            f"{MAX_PROBABILITY_CHANGE}; not stored"
        )
    quantization = {
        "method": HEAD_METHOD,
        "from_precision": REFERENCE_PRECISION,
        # The fp32 graph's parity against its PyTorch module; the metrics in ``training`` were
        # measured with the fp32 head too.
        "reference_parity_max_abs_diff": spec.parity_max_abs_diff,
        **dataclasses.asdict(parity),
        "versions": {"onnxruntime": onnxruntime.__version__},
    }
    variant = dataclasses.replace(
        spec,
        precision=INT8,
        parity_max_abs_diff=parity.logits_max_abs_diff,
        training={**spec.training, "quantization": quantization},
    )
    return variant, quantized


def quantize_head_for(
    repo: ModelRepository, spec: HeadSpec, model: bytes
) -> tuple[HeadSpec, bytes]:
    """The int8 copy of an exported fp32 head of ``repo``'s trunk, checked on that trunk's taps."""
    trunk = repo.read_trunk_spec()
    if spec.trunk_fingerprint != trunk.fingerprint:
        raise QuantizationError(
            f"head {spec.task!r} was made for trunk {spec.trunk_fingerprint[:12]}..., "
            f"{repo.root} holds trunk {trunk.fingerprint[:12]}...: its taps cannot check the copy"
        )
    return quantize_head(spec, model, trunk_head_samples(repo, spec.branch_layer))
