"""Export heads: trained classification heads traced from PyTorch, and the training-free kinds.

Every head is checked at export against a PyTorch module fed the same trunk taps, computed by the
PyTorch trunk on real sample text with padding. The resulting ``HeadSpec`` records the trunk
fingerprint, the branch tap and the measured parity figure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multitask_serve.export.encoder import Encoder, EncoderError
from multitask_serve.export.modules import Head, Trunk, mean_pool
from multitask_serve.export.onnx_export import (
    HEAD_TOLERANCE,
    TRUNK_TOLERANCE,
    ExportDecl,
    ParityError,
    export,
    max_abs_diff,
)
from multitask_serve.export.onnx_export import session as onnx_session
from multitask_serve.export.quantize import INT8, HeadSample, quantize_head
from multitask_serve.export.samples import encode, sample_batches, tokenizer_from_json
from multitask_serve.modelrepo import graphs
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import (
    HEAD_HIDDEN_INPUT,
    HEAD_MASK_INPUT,
    KINDS,
    REFERENCE_PRECISION,
    HeadSpec,
    Kind,
    TrunkSpec,
)

# What ``classification`` can write: the traced graph, or its int8 copy (export/quantize.py).
HEAD_PRECISIONS = (REFERENCE_PRECISION, INT8)

log = logging.getLogger(__name__)


# The PyTorch references of the kinds built without training (KindTraits.trained is False): what
# their graphs must reproduce. They stay here, not in the torch-free KINDS table the service reads.
class EmbeddingReference(nn.Module):
    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)


class ZeroShotReference(nn.Module):
    def __init__(self, label_embeddings: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.labels = F.normalize(label_embeddings, p=2, dim=-1)
        self.scale = scale

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        text = F.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)
        return self.scale * text @ self.labels.T


class HeadExporter:
    """Exports heads against one trunk; holds the sample taps every parity check uses."""

    def __init__(self, encoder: Encoder, trunk: TrunkSpec) -> None:
        self.encoder = encoder
        self.trunk_spec = trunk
        self.trunk = Trunk(encoder).eval()
        self.tokenizer = tokenizer_from_json(encoder.tokenizer_json, trunk.max_length)
        self._samples = [self._taps(b) for b in sample_batches(self.tokenizer, self._types)]

    @classmethod
    def for_repository(cls, encoder: Encoder, repo: ModelRepository) -> HeadExporter:
        """An exporter for heads that ``repo``'s trunk will serve.

        Heads record the repository trunk's fingerprint, so the encoder must be the one that trunk
        was exported from: its taps must reproduce the trunk graph's on the sample batches.
        """
        trunk = repo.read_trunk_spec()
        if (trunk.num_layers, trunk.hidden_size) != (encoder.num_layers, encoder.hidden_size):
            raise EncoderError(
                f"the encoder has {encoder.num_layers} layers of width {encoder.hidden_size}; "
                f"{repo.root}'s trunk has {trunk.num_layers} of width {trunk.hidden_size}"
            )
        exporter = cls(encoder, trunk)
        session = onnx_session(repo.trunk_model_path.read_bytes())
        for feeds in sample_batches(exporter.tokenizer, exporter._types):
            taps = session.run(list(trunk.tap_names), {k: v.numpy() for k, v in feeds.items()})
            with torch.no_grad():
                expected = exporter.trunk(*feeds.values())
            diff = max(
                float(np.max(np.abs(t - e.numpy()))) for t, e in zip(taps, expected, strict=True)
            )
            if diff > TRUNK_TOLERANCE:
                raise EncoderError(
                    f"the encoder is not the one {repo.root}'s trunk was exported from "
                    f"(taps differ by {diff:.3g}); pass the same --encoder as the build"
                )
        return exporter

    @property
    def _types(self) -> bool:
        return "token_type_ids" in self.trunk_spec.input_names

    def _taps(
        self, feeds: dict[str, torch.Tensor]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        with torch.no_grad():
            return self.trunk(*feeds.values()), feeds["attention_mask"]

    def _feeds(self, index: int, layer: int) -> dict[str, torch.Tensor]:
        taps, mask = self._samples[index]
        return {HEAD_HIDDEN_INPUT: taps[layer], HEAD_MASK_INPUT: mask}

    def _check(
        self, name: str, model: bytes, reference: nn.Module, layer: int, kind: Kind
    ) -> float:
        """Parity of a graph built without training against its kind's PyTorch reference."""
        out = [KINDS[kind].output]
        diff = max(
            max_abs_diff(model, reference.eval(), self._feeds(i, layer), out) for i in (0, 1)
        )
        log.info("%s parity: max abs diff %.3g (tolerance %.0e)", name, diff, HEAD_TOLERANCE)
        if not diff <= HEAD_TOLERANCE:
            raise ParityError(f"{name}: ONNX differs from PyTorch by {diff:.3g}")
        return diff

    def classification(
        self,
        task: str,
        head: Head,
        labels: tuple[str, ...] | list[str],
        training: Mapping[str, Any] | None = None,
        precision: str = REFERENCE_PRECISION,
    ) -> tuple[HeadSpec, bytes]:
        """Export a trained head; its branch tap is L minus the number of layers it owns.

        With ``precision="int8"`` the traced fp32 graph (checked against the module) is quantized
        and checked against that graph on the same sample taps; the int8 copy is returned.
        """
        if precision not in HEAD_PRECISIONS:
            raise ValueError(
                f"head precision {precision!r}: choose one of {', '.join(HEAD_PRECISIONS)}"
            )
        if head.classifier.out_features != len(labels):
            raise ValueError(
                f"{task}: classifier has {head.classifier.out_features} outputs, "
                f"{len(labels)} labels given"
            )
        branch = self.trunk_spec.num_layers - len(head.layers)
        traits = KINDS[head.kind]
        seq_axes = {0: "batch", 1: "seq"}
        out_axes = seq_axes if traits.per_token else {0: "batch"}
        decl = ExportDecl(
            f"head {task}",
            (HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT),
            (traits.output,),
            {HEAD_HIDDEN_INPUT: seq_axes, HEAD_MASK_INPUT: seq_axes, traits.output: out_axes},
            HEAD_TOLERANCE,
        )
        exported = export(head.eval(), self._feeds(0, branch), decl, check=self._feeds(1, branch))
        spec = HeadSpec(
            task=task,
            kind=head.kind,
            branch_layer=branch,
            hidden_size=self.trunk_spec.hidden_size,
            trunk_fingerprint=self.trunk_spec.fingerprint,
            labels=tuple(labels),
            pooling=head.pooling,
            parity_max_abs_diff=exported.max_abs_diff,
            training=dict(training or {}),
        )
        if precision == INT8:
            return quantize_head(spec, exported.model, self.head_samples(branch))
        return spec, exported.model

    def head_samples(self, layer: int) -> list[HeadSample]:
        """The sample taps at ``layer`` with their masks, as a head graph is fed them."""
        return [(taps[layer].numpy(), mask.numpy()) for taps, mask in self._samples]

    def embedding(self, task: str = "embed") -> tuple[HeadSpec, bytes]:
        layer = self.trunk_spec.num_layers
        model = graphs.embedding_graph(self.trunk_spec.hidden_size)
        diff = self._check(f"head {task}", model, EmbeddingReference(), layer, Kind.EMBEDDING)
        spec = HeadSpec(
            task=task,
            kind=Kind.EMBEDDING,
            branch_layer=layer,
            hidden_size=self.trunk_spec.hidden_size,
            trunk_fingerprint=self.trunk_spec.fingerprint,
            parity_max_abs_diff=diff,
            training={"strategy": "frozen"},
        )
        return spec, model

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        feeds = encode(self.tokenizer, texts, self._types)
        with torch.no_grad():
            taps = self.trunk(*feeds.values())
            return EmbeddingReference()(taps[-1], feeds["attention_mask"])

    def zero_shot(self, task: str, descriptions: Mapping[str, str]) -> tuple[HeadSpec, bytes]:
        """A zero-shot head: each label is described in words, embedded once by the trunk."""
        labels = list(descriptions)
        label_embeddings = self.embed_texts([descriptions[label] for label in labels])
        model = graphs.zero_shot_graph(label_embeddings.numpy().astype(np.float32))
        reference = ZeroShotReference(label_embeddings, graphs.ZERO_SHOT_SCALE)
        layer = self.trunk_spec.num_layers
        diff = self._check(f"head {task}", model, reference, layer, Kind.ZERO_SHOT)
        spec = HeadSpec(
            task=task,
            kind=Kind.ZERO_SHOT,
            branch_layer=layer,
            hidden_size=self.trunk_spec.hidden_size,
            trunk_fingerprint=self.trunk_spec.fingerprint,
            labels=tuple(labels),
            parity_max_abs_diff=diff,
            training={"strategy": "frozen", "label_descriptions": dict(descriptions)},
        )
        return spec, model
