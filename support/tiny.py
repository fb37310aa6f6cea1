"""Tiny real things for the tests and the benchmarks: a random-weight BERT with its own WordPiece
tokenizer, and a repository built on it with one zero-shot head.

torch and transformers are imported inside the functions that need them: the unit tier, which runs
without them (tests/e2e/test_unit_tier.py), imports ``TOPIC_LABELS`` from here.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (  # noqa: SIM905
    "the a an and or but not is are was were be been this that it he she they we you i of to in "
    "on at by for with from as market bank rates shares profit company match team goal scored "
    "final player film music star show election minister vote parliament phone software computer "
    "internet good great bad awful happy sad love hate london paris john mary apple google"
).split()
TINY_LAYERS = 6
TINY_HIDDEN = 32
# The zero-shot head's labels, each with the words that describe it.
TOPIC_LABELS = {
    "sport": "sport football match team goal",
    "business": "business market bank shares profit company",
    "politics": "politics election minister vote parliament",
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = (f"##{c}" for c in string.ascii_lowercase + string.digits)
    vocab = list(dict.fromkeys([*SPECIALS, *WORDS, *chars, *pieces]))  # "a", "i" are words too
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def write_tiny_encoder(directory: Path, seed: int, layers: int = TINY_LAYERS) -> Path:
    """A 6-layer (by default), 32-wide random BERT saved as a Hugging Face directory."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_repository(root: Path) -> Path:
    """The tests' repository in ``root / "repo"``: the tiny encoder's trunk (seed 0, written to
    ``root / "encoder"``) and one zero-shot head, ``topic-zs``."""
    from multitask_serve.export.build import build_repository
    from multitask_serve.export.encoder import load_encoder

    encoder = load_encoder(write_tiny_encoder(root / "encoder", seed=0))
    build_repository(root / "repo", encoder, {"topic-zs": TOPIC_LABELS}, report=lambda _: None)
    return root / "repo"
