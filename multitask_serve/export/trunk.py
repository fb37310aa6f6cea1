"""Export the frozen encoder as the shared trunk graph and install it in a model repository."""

from __future__ import annotations

import torch
from torch import nn

from multitask_serve.export.encoder import Encoder, freeze
from multitask_serve.export.modules import Trunk
from multitask_serve.export.onnx_export import TRUNK_TOLERANCE, ExportDecl, export
from multitask_serve.export.samples import sample_batches, tokenizer_from_json
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import TrunkSpec, tap_name, trunk_fingerprint


class LibraryTaps(nn.Module):
    """The encoder's own forward pass (its own masking code), returning every hidden state."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.model = encoder.model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = ("input_ids", "attention_mask", "token_type_ids")
        out = self.model(**dict(zip(names, inputs, strict=False)), output_hidden_states=True)
        return tuple(out.hidden_states)


def trunk_decl(encoder: Encoder) -> ExportDecl:
    inputs = ["input_ids", "attention_mask"]
    if encoder.uses_token_type_ids:
        inputs.append("token_type_ids")
    outputs = tuple(tap_name(i) for i in range(encoder.num_layers + 1))
    axes = {name: {0: "batch", 1: "seq"} for name in (*inputs, *outputs)}
    return ExportDecl("trunk", tuple(inputs), outputs, axes, TRUNK_TOLERANCE)


def export_trunk(encoder: Encoder) -> tuple[TrunkSpec, bytes]:
    """Trace the frozen encoder; parity is checked against the library's own forward pass."""
    freeze(encoder.model)
    decl = trunk_decl(encoder)
    tokenizer = tokenizer_from_json(encoder.tokenizer_json, encoder.max_length)
    sample, check = sample_batches(tokenizer, encoder.uses_token_type_ids)
    exported = export(Trunk(encoder), sample, decl, check=check, reference=LibraryTaps(encoder))
    spec = TrunkSpec(
        base_model=encoder.base_model,
        num_layers=encoder.num_layers,
        hidden_size=encoder.hidden_size,
        max_length=encoder.max_length,
        input_names=decl.input_names,
        fingerprint=trunk_fingerprint(exported.model, encoder.tokenizer_json),
        parity_max_abs_diff=exported.max_abs_diff,
        versions=_versions(),
    )
    return spec, exported.model


def install_trunk(repo: ModelRepository, encoder: Encoder) -> TrunkSpec:
    spec, model = export_trunk(encoder)
    repo.write_trunk(spec, model, encoder.tokenizer_json)
    return spec


def _versions() -> dict[str, str]:
    import onnx
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }
