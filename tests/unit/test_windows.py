"""Overlapping windows (service/windows.py): they cover the text, hold at most the capacity,
overlap as asked, agree with the tokenizer's own overflowing windows, and every token's owner is
a window holding it with the most context on both sides."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multitask_serve.service.windows import Window, count, owners, windows


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int]:
    capacity = draw(st.integers(1, 40))
    overlap = draw(st.integers(0, capacity - 1))
    n = draw(st.integers(0, 400))
    return n, capacity, overlap


@settings(max_examples=400, deadline=None)
@given(layouts())
def test_windows_cover_the_text_within_capacity_overlapping_as_asked(layout):
    n, capacity, overlap = layout
    spans = windows(n, capacity, overlap)
    assert len(spans) == count(n, capacity, overlap)
    assert spans[0].start == 0 and spans[-1].stop == n
    assert all(0 < len(s) <= capacity for s in spans) or n == 0
    for before, after in itertools.pairwise(spans):
        assert len(before) == capacity  # only the last window is short
        assert after.start == before.stop - overlap  # consecutive windows share `overlap`
    if n <= capacity:
        assert spans == [Window(0, n)]


@settings(max_examples=400, deadline=None)
@given(layouts())
def test_each_token_is_spoken_for_by_the_window_where_it_has_most_context(layout):
    n, capacity, overlap = layout
    spans = windows(n, capacity, overlap)
    if n == 0:
        return
    chosen = owners(spans)
    assert len(chosen) == n
    for token, (index, position) in enumerate(chosen):
        span = spans[index]
        assert span.start + position == token and span.start <= token < span.stop
        context = min(token - span.start, span.stop - 1 - token)
        holding = [s for s in spans if s.start <= token < s.stop]
        assert context == max(min(token - s.start, s.stop - 1 - token) for s in holding)
        # the earliest of the windows that tie
        assert index == min(
            i
            for i, s in enumerate(spans)
            if s.start <= token < s.stop and min(token - s.start, s.stop - 1 - token) == context
        )


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="at least one token"):
        windows(10, 0, 0)
    with pytest.raises(ValueError, match="overlap"):
        windows(10, 4, 4)


def _bert_like_tokenizer(text: str):
    """A word-level tokenizer that adds [CLS] and [SEP] as BERT's does (the serving install
    has ``tokenizers`` but no encoder package)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted(set(text.replace(",", " ,").split()))
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def test_the_windows_are_the_tokenizers_overflowing_encodings():
    text = " ".join(f"word{i} and, more" for i in range(60))
    tokenizer = _bert_like_tokenizer(text)
    whole = [t for t, s in zip(*_ids(tokenizer.encode(text)), strict=True) if not s]
    assert len(whole) == 240
    for max_length, stride in ((16, 4), (32, 0), (24, 11)):
        tokenizer.enable_truncation(max_length=max_length, stride=stride)
        encoding = tokenizer.encode(text)
        theirs = [
            [t for t, s in zip(*_ids(e), strict=True) if not s]
            for e in [encoding, *encoding.overflowing]
        ]
        ours = [whole[w.start : w.stop] for w in windows(len(whole), max_length - 2, stride)]
        assert ours == theirs, (max_length, stride)
        assert len(ours) > 3
        tokenizer.no_truncation()


def _ids(encoding) -> tuple[list[int], list[int]]:
    return encoding.ids, encoding.special_tokens_mask
