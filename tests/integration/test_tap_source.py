"""What a head trains on: length-grouped batches and pooled caches for head-only heads."""

from __future__ import annotations

import random

import pytest
import torch

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.modules import Head, Trunk
from multitask_serve.modelrepo.types import Kind
from multitask_serve.training.features import GROUP_BATCHES, Encoded, TapSource
from multitask_serve.training.loop import predict


def encoded(encoder: Encoder, n: int, seed: int = 0) -> Encoded:
    """``n`` texts of 1-40 random word pieces, between [CLS] and [SEP]."""
    rng = random.Random(seed)
    vocab = encoder.model.config.vocab_size
    ids = [
        [101 % vocab, *(rng.randrange(vocab) for _ in range(rng.randrange(1, 40))), 102 % vocab]
        for _ in range(n)
    ]
    return Encoded(ids=ids, labels=[i % 3 for i in range(n)])


def source(encoder: Encoder, data: Encoded, **kw) -> TapSource:
    trunk = Trunk(encoder).eval()
    return TapSource(trunk, encoder.num_layers, data, encoder.hidden_size, 8, False, 1 << 30, **kw)


def padding(src: TapSource, seed: int) -> tuple[int, list[int]]:
    """Padded token slots over one shuffled epoch, and the example indices seen."""
    padded, seen = 0, []
    for batch in src.batches(shuffle=True, generator=torch.Generator().manual_seed(seed)):
        padded += int(batch.mask.numel() - batch.mask.sum())
        seen += batch.index
    return padded, seen


def test_grouped_batches_cover_every_example_once_with_less_padding(tiny_encoder):
    data = encoded(tiny_encoder, 8 * GROUP_BATCHES * 2 + 5)  # two full groups and a short one
    grouped = source(tiny_encoder, data)
    mixed = source(tiny_encoder, data, group_by_length=False)
    for seed in range(3):
        padded, seen = padding(grouped, seed)
        padded_mixed, seen_mixed = padding(mixed, seed)
        assert sorted(seen) == sorted(seen_mixed) == list(range(len(data.ids)))
        assert padded < padded_mixed / 3
    # The batches' order is random: not shortest first, and it differs between epochs.
    first = [b.index for b in grouped.batches(True, torch.Generator().manual_seed(0))]
    again = [b.index for b in grouped.batches(True, torch.Generator().manual_seed(1))]
    widths = [max(len(data.ids[i]) for i in batch) for batch in first]
    assert widths != sorted(widths) and first != again


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_cache_gives_a_head_only_head_the_same_logits_as_token_states(tiny_encoder, pooling):
    data = encoded(tiny_encoder, 40, seed=1)
    head = Head(Kind.SEQUENCE_CLASSIFICATION, tiny_encoder.hidden_size, 3, pooling=pooling).eval()
    pooled = source(tiny_encoder, data, pooling=pooling)
    tokens = source(tiny_encoder, data)
    assert pooled.cached is not None and all(row.shape[0] == 1 for row in pooled.cached)
    for got, want in zip(predict(head, pooled), predict(head, tokens), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Uncached (over the memory limit), the pooled source pools each batch as it runs it.
    uncached = TapSource(
        Trunk(tiny_encoder).eval(),
        tiny_encoder.num_layers,
        data,
        tiny_encoder.hidden_size,
        8,
        False,
        0,
        pooling=pooling,
    )
    assert uncached.cached is None
    for got, want in zip(predict(head, uncached), predict(head, tokens), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
