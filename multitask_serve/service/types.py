"""The small vocabulary the service layers speak: tokenized batches, loaded heads, task outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

# One text's result: a classification dict, a list of entity dicts, or an embedding.
Output = dict[str, Any] | list[dict[str, Any]] | list[float]


@dataclass(frozen=True)
class TokenizedBatch:
    """A padded batch and, per text, its tokenizer encoding.

    Offsets and word ids are Python lists made from the encodings on first use: only heads that
    map tokens back to characters (token classification) pay for them.
    """

    feeds: dict[str, np.ndarray]  # trunk inputs, padded to the longest text
    encodings: Sequence[Any]  # per text: a ``tokenizers.Encoding`` (offsets, word ids)
    truncated: list[bool]
    width: int | None = None  # tokens of each encoding in this batch (None: all of them)

    @cached_property
    def offsets(self) -> list[list[tuple[int, int]]]:
        """Per text, per token: character span; (0, 0) for special tokens."""
        return [list(e.offsets[: self.width]) for e in self.encodings]

    @cached_property
    def word_ids(self) -> list[list[int | None]]:
        """Per text, per token: word index, None for special tokens."""
        return [list(e.word_ids[: self.width]) for e in self.encodings]

    @property
    def attention_mask(self) -> np.ndarray:
        return self.feeds["attention_mask"]

    @property
    def size(self) -> int:
        return len(self.truncated)

    def rows(self, index: list[int]) -> TokenizedBatch:
        """The same batch restricted to some rows (padding width unchanged)."""
        return TokenizedBatch(
            feeds={k: v[index] for k, v in self.feeds.items()},
            encodings=[self.encodings[i] for i in index],
            truncated=[self.truncated[i] for i in index],
            width=self.width,
        )

    def group(self, index: list[int]) -> TokenizedBatch:
        """Rows ``index``, in that order, padded only to the longest of them (padding is on the
        right). Every row in its own order is the batch itself, not a copy."""
        if index == list(range(self.size)):
            return self
        picked = self.rows(index)
        width = int(picked.attention_mask.sum(axis=1).max())
        return TokenizedBatch(
            feeds={k: v[:, :width] for k, v in picked.feeds.items()},
            encodings=picked.encodings,
            truncated=picked.truncated,
            width=width,
        )


@dataclass(frozen=True)
class TaskResult:
    task: str
    version: int
    kind: str
    outputs: list[Output]


@dataclass(frozen=True)
class Job:
    """One request's work: its texts and the heads (a snapshot) that must read them."""

    heads: Mapping[str, Any]  # task -> registry.LoadedHead
    texts: list[str]
    # A text longer than the served length: read whole in windows (True) or cut (False).
    whole: bool = True
    # Where the first text sits in its request (a request split into several jobs): errors
    # name a text by its index in the request.
    first: int = 0


@dataclass(frozen=True)
class JobResult:
    results: dict[str, TaskResult]
    truncated: list[bool]
    tokens: list[int] = field(default_factory=list)  # per text: tokens the trunk read
    windows: list[int] = field(default_factory=list)  # per text: windows (rows) it took
