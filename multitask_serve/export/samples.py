"""Sample inputs for tracing and parity checks: real text, padded batches of two shapes."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

SAMPLE_TEXTS = (
    "The central bank raised interest rates by half a point on Thursday.",
    "What a brilliant match, the striker scored twice in the final minutes!",
    "I am not sure this phone was worth the money.",
    "Parliament votes on the new climate bill next week.",
    "ok",
)


def tokenizer_from_json(tokenizer_json: bytes, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_str(tokenizer_json.decode())
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding()
    return tokenizer


def encode(
    tokenizer: Tokenizer, texts: tuple[str, ...] | list[str], with_token_types: bool
) -> dict[str, torch.Tensor]:
    encodings = tokenizer.encode_batch(list(texts))
    feeds = {
        "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
    }
    if with_token_types:
        feeds["token_type_ids"] = torch.zeros_like(feeds["input_ids"])
    return feeds


def sample_batches(
    tokenizer: Tokenizer, with_token_types: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two padded batches of different batch size and length (so no axis gets specialised)."""
    return (
        encode(tokenizer, SAMPLE_TEXTS[:3], with_token_types),
        encode(tokenizer, SAMPLE_TEXTS[3:], with_token_types),
    )
