"""What export and training pass around: a loaded encoder (no import of ours, so every export
module may use it; ``encoder.py`` loads one)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel


@dataclass
class Encoder:
    model: PreTrainedModel
    tokenizer_json: bytes
    base_model: str
    max_length: int

    @property
    def layers(self) -> nn.ModuleList:
        layers = getattr(self.model, "encoder").layer  # noqa: B009 (untyped across model classes)
        assert isinstance(layers, nn.ModuleList)
        return layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def uses_token_type_ids(self) -> bool:
        return int(getattr(self.model.config, "type_vocab_size", 0) or 0) > 0
