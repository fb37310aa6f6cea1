"""Tokenization with the trunk's own tokenizer.json (Rust ``tokenizers``), keeping offsets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from multitask_serve.service.types import TokenizedBatch


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the token as the vocabulary spells it
    special: bool
    start: int  # character span in the text; (0, 0) for special tokens
    stop: int


class TextEncoder:
    def __init__(self, tokenizer_path: Path, max_length: int, input_names: tuple[str, ...]) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding()
        self.max_length = max_length
        self._types = "token_type_ids" in input_names

    def tokens(self, texts: list[str]) -> list[list[Token]]:
        """Per text, its tokens as the trunk reads them (truncated, special tokens included)."""
        encodings = self._tokenizer.encode_batch(texts)
        # Padding is on the right: a text's own tokens are the first sum(attention_mask).
        return [
            [
                Token(i, tok, w is None, start, end)
                for i, tok, w, (start, end) in zip(
                    e.ids, e.tokens, e.word_ids, e.offsets, strict=True
                )
            ][: sum(e.attention_mask)]
            for e in encodings
        ]

    def encode(self, texts: list[str]) -> TokenizedBatch:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if self._types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return TokenizedBatch(
            feeds=feeds,
            encodings=encodings,
            truncated=[bool(e.overflowing) for e in encodings],
        )
