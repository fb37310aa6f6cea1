"""The small vocabulary the service layers speak: tokenized batches, loaded heads, task outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# One text's result: a classification dict, a list of entity dicts, or an embedding.
Output = dict[str, Any] | list[dict[str, Any]] | list[float]


@dataclass(frozen=True)
class TokenizedBatch:
    feeds: dict[str, np.ndarray]  # trunk inputs, padded to the longest text
    offsets: list[list[tuple[int, int]]]  # per text, per token: character span (0, 0) = special
    word_ids: list[list[int | None]]  # per text, per token: word index, None for special tokens
    truncated: list[bool]

    @property
    def attention_mask(self) -> np.ndarray:
        return self.feeds["attention_mask"]

    @property
    def size(self) -> int:
        return len(self.truncated)


@dataclass(frozen=True)
class TaskResult:
    task: str
    version: int
    kind: str
    outputs: list[Output]
