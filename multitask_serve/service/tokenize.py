"""Tokenization with the trunk's own tokenizer.json (Rust ``tokenizers``), keeping offsets.

A text longer than the served length is read whole, in overlapping windows (service/windows.py
lays them out; the tokenizer's overflowing encodings with ``stride`` are those windows), each
window one row of the batch; or cut at the served length when its request asks for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from multitask_serve.service.types import TokenizedBatch
from multitask_serve.service.windows import count

# Tokens two neighbouring windows share, by default: a token takes its answer from a window in
# which it has at least half this many tokens of context on either side. Chosen on documents of
# validation sentences among 0, 32, 64, 96 and 127: the smallest within a point of the best
# entity F1 (0 is 3 points lower; 32 to 96 are level, and each step costs windows), by
# bench/long_texts.py.
DEFAULT_OVERLAP = 32


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the token as the vocabulary spells it
    special: bool
    start: int  # character span in the text; (0, 0) for special tokens
    stop: int


@dataclass(frozen=True)
class Encoded:
    """Texts as rows of a batch: a text that fits (or is cut) is one row, a longer one a row per
    window, its rows consecutive."""

    batch: TokenizedBatch  # one row per window; ``truncated`` marks a cut text's row
    rows: list[range]  # per text, its rows

    @property
    def windows(self) -> list[int]:
        """Per text, how many windows (rows) it took."""
        return [len(r) for r in self.rows]


class TextEncoder:
    def __init__(
        self,
        tokenizer_path: Path,
        max_length: int,
        input_names: tuple[str, ...],
        overlap: int | None = None,
    ) -> None:
        """``overlap``: tokens neighbouring windows share (None: ``DEFAULT_OVERLAP``, or less
        where the served length leaves no room for it)."""
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_padding()
        # Special tokens each window adds ([CLS] and [SEP] for BERT): a window's content is the
        # served length less these.
        self.specials = self._tokenizer.num_special_tokens_to_add(is_pair=False)
        self.capacity = max_length - self.specials
        if self.capacity < 1:
            raise ValueError(f"a served length of {max_length} leaves no room for a text")
        if overlap is None:
            overlap = min(DEFAULT_OVERLAP, self.capacity // 2)
        if not 0 <= overlap < self.capacity:
            raise ValueError(
                f"a window overlap of {overlap} tokens must be at least 0 and under a window's "
                f"{self.capacity} tokens of text"
            )
        self.overlap = overlap
        self._tokenizer.enable_truncation(max_length=max_length, stride=overlap)
        self.max_length = max_length
        self._types = "token_type_ids" in input_names

    def tokens(self, texts: list[str]) -> list[list[Token]]:
        """Per text, its tokens as the trunk reads them when cut (special tokens included)."""
        return [
            [
                Token(i, tok, w is None, start, end)
                for i, tok, w, (start, end) in zip(
                    e.ids, e.tokens, e.word_ids, e.offsets, strict=True
                )
            ]
            for e in self._tokenizer.encode_batch(texts)
        ]

    def encode(self, texts: list[str], whole: Sequence[bool] | bool = False) -> Encoded:
        """``texts`` as rows, padded on the right to the longest row; a text longer than the
        served length is read in windows where ``whole`` (per text, or for all) says so, else
        cut."""
        rows: list[Encoding] = []
        spans, cut = [], []
        for i, e in enumerate(self._tokenizer.encode_batch(texts)):
            read_whole = whole if isinstance(whole, bool) else whole[i]
            parts = [e, *e.overflowing] if read_whole and e.overflowing else [e]
            spans.append(range(len(rows), len(rows) + len(parts)))
            rows.extend(parts)
            cut.extend([bool(e.overflowing) and len(parts) == 1] + [False] * (len(parts) - 1))
        width = max(len(e.ids) for e in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, e in enumerate(rows):
            ids[r, : len(e.ids)] = e.ids
            mask[r, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return Encoded(TokenizedBatch(feeds=feeds, encodings=rows, truncated=cut), spans)

    def windows(self, tokens: int) -> int:
        """How many windows a text of ``tokens`` tokens (special tokens included) takes."""
        return count(max(tokens - self.specials, 0), self.capacity, self.overlap)
