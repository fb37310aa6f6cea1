"""PyTorch modules that become the trunk and head graphs.

``Trunk`` runs the encoder layer by layer and returns the hidden state at every layer boundary
(the taps). ``Head`` owns copies of the layers above its branch tap, then pools and classifies.
Both build the attention mask the same way, so trunk tap ``L-k`` followed by a head owning layers
``L-k+1..L`` is the same computation as the whole encoder.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from multitask_serve.export.types import Encoder
from multitask_serve.modelrepo.types import KINDS, Kind


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq) 0/1 mask -> (batch, 1, 1, seq) additive mask for eager attention."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def run_layers(
    layers: nn.ModuleList, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> list[torch.Tensor]:
    """Apply ``layers`` in order; return the hidden state after each one."""
    mask = additive_mask(attention_mask, hidden.dtype)
    states = []
    for layer in layers:
        out = layer(hidden, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out
        states.append(hidden)
    return states


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens, as sentence-transformers pools MiniLM."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Trunk(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) -> (tap_0, ..., tap_L)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        embeddings = encoder.model.embeddings
        assert isinstance(embeddings, nn.Module)
        self.embeddings = embeddings
        # ELECTRA with embedding_size != hidden_size (ELECTRA-small) projects its embeddings up to
        # the layers' width outside ``embeddings``; its tap 0 is the projected state.
        project = getattr(encoder.model, "embeddings_project", None)
        self.project = project if isinstance(project, nn.Module) else nn.Identity()
        self.layers = encoder.layers

    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tap 0: the hidden state the first layer reads."""
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.project(self.embeddings(input_ids=input_ids, **kwargs))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        hidden = self.embed(input_ids, token_type_ids)
        return (hidden, *run_layers(self.layers, hidden, attention_mask))


class Head(nn.Module):
    """(hidden at the branch tap, attention_mask) -> logits.

    ``layers`` are this task's own copies of the encoder layers above the branch tap (empty for a
    head-only head). Sequence classification pools (mean or the first token) before the classifier;
    token classification classifies every token.
    """

    def __init__(
        self,
        kind: Kind,
        hidden_size: int,
        num_labels: int,
        layers: nn.ModuleList | None = None,
        pooling: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not KINDS[kind].trained:
            raise ValueError(f"a trained head is a classification head, not {kind}")
        self.kind = kind
        self.pooling = "none" if KINDS[kind].per_token else pooling
        self.layers = layers if layers is not None else nn.ModuleList()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if len(self.layers):
            hidden = run_layers(self.layers, hidden, attention_mask)[-1]
        if self.pooling == "mean":
            return mean_pool(hidden, attention_mask)
        if self.pooling == "cls":
            return hidden[:, 0]
        return hidden

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(hidden, attention_mask)))


def top_layers(encoder: Encoder, k: int) -> nn.ModuleList:
    """Independent copies of the top ``k`` layers: a head's own, never shared with the trunk."""
    if not 0 <= k <= encoder.num_layers:
        raise ValueError(f"k must be in 0..{encoder.num_layers}, got {k}")
    return nn.ModuleList(copy.deepcopy(layer) for layer in encoder.layers[encoder.num_layers - k :])
