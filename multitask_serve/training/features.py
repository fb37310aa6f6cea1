"""From examples to model inputs: tokenization, word-piece label alignment, frozen-tap caching.

NER alignment follows how the service decodes: the text is the dataset's words joined by spaces and
tokenized like any request. The first word piece of each pre-tokenizer word carries a label: the
dataset word's tag where the word starts, the matching ``I-`` tag (or ``O``) where the tokenizer
splits a dataset word further (``@user:`` -> ``@``, ``user``, ``:``). Other pieces are ignored
(-100). A dataset word's prediction is read at its first piece.

The frozen part of the encoder (embeddings and layers below the head's branch) never changes, so
its output is computed once per example and reused every epoch, where memory allows.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from multitask_serve.export.modules import Trunk, mean_pool, run_layers
from multitask_serve.export.progress import progress
from multitask_serve.export.samples import tokenizer_from_json
from multitask_serve.training.data import TextExample, TokenExample

IGNORE = -100


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int] | list[list[int]]  # one per text, or one per token (IGNORE where unlabelled)
    # NER only: per example, per dataset word, the token index its prediction is read at (None:
    # truncated away, predicted "O").
    word_tokens: list[list[int | None]] | None = None


def rust_tokenizer(tokenizer_json: bytes, max_length: int) -> Tokenizer:
    """The trunk's tokenizer, truncating, unpadded (batches pad themselves)."""
    tokenizer = tokenizer_from_json(tokenizer_json, max_length)
    tokenizer.no_padding()
    return tokenizer


def encode_texts(
    tokenizer: Tokenizer, examples: Sequence[TextExample], labels: Sequence[str]
) -> Encoded:
    index = {label: i for i, label in enumerate(labels)}
    encodings = tokenizer.encode_batch([e.text for e in examples])
    return Encoded(ids=[e.ids for e in encodings], labels=[index[e.label] for e in examples])


def _inside(tag: str) -> str:
    return "O" if tag == "O" else f"I-{tag.partition('-')[2]}"


def encode_tokens(
    tokenizer: Tokenizer, examples: Sequence[TokenExample], labels: Sequence[str]
) -> Encoded:
    index = {label: i for i, label in enumerate(labels)}
    all_ids, all_labels, all_words = [], [], []
    for example in examples:
        starts, pos = [], 0
        for token in example.tokens:
            starts.append(pos)
            pos += len(token) + 1
        enc = tokenizer.encode(" ".join(example.tokens))
        token_labels = [IGNORE] * len(enc.ids)
        word_tokens: list[int | None] = [None] * len(example.tokens)
        seen_words: set[int] = set()
        for i, (word_id, (start, _)) in enumerate(zip(enc.word_ids, enc.offsets, strict=True)):
            if word_id is None or word_id in seen_words:
                continue
            seen_words.add(word_id)
            w = bisect.bisect_right(starts, start) - 1
            tag = example.tags[w]
            if start == starts[w]:
                token_labels[i] = index[tag]
                word_tokens[w] = i
            else:
                token_labels[i] = index[_inside(tag)]
        all_ids.append(enc.ids)
        all_labels.append(token_labels)
        all_words.append(word_tokens)
    return Encoded(ids=all_ids, labels=all_labels, word_tokens=all_words)


@dataclass
class Batch:
    hidden: torch.Tensor  # (B, T, H) the branch tap, or input ids (B, T) when not cached
    mask: torch.Tensor
    labels: torch.Tensor
    index: list[int]


def _pad(rows: list[torch.Tensor], value: float) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


# Length grouping: each run of this many batches' worth of shuffled examples is sorted by length
# before it is cut into batches (Hugging Face's ``group_by_length`` uses the same 50).
GROUP_BATCHES = 50


class FeatureStore:
    """Frozen taps on disk, shared by the runs of one task (``mts report``: its seeds and
    strategies).

    The trunk below a head's tap is frozen, so the tap one run computes for a data split is the
    same for every other run of the task that reads that tap. The first run writes it to
    ``directory``; later runs read it back instead of running the trunk. Each run still holds
    only its own copy in memory, so per-run peak memory means what it meant without the store.
    A run's cost stays comparable: ``computed_seconds`` and ``loaded_seconds`` add up, per store,
    what the entries read back took to compute and to read, so that a run can report its time
    as if it had computed them (``training.train``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.computed_seconds = 0.0  # of the entries read back
        self.loaded_seconds = 0.0
        self.hits = 0

    def _path(self, key: tuple[object, ...]) -> Path:
        return self.directory / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}.pt"

    def load(self, key: tuple[object, ...]) -> list[torch.Tensor] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        started = time.perf_counter()
        saved = torch.load(path)
        rows = list(torch.split(saved["flat"], saved["lengths"].tolist()))
        self.loaded_seconds += time.perf_counter() - started
        self.computed_seconds += float(saved["seconds"])
        self.hits += 1
        return rows

    def save(self, key: tuple[object, ...], rows: list[torch.Tensor], seconds: float) -> None:
        if not rows:  # an empty split: nothing to share
            return
        path = self._path(key)
        partial = path.with_suffix(".partial")
        lengths = torch.tensor([row.shape[0] for row in rows])
        torch.save({"flat": torch.cat(rows), "lengths": lengths, "seconds": seconds}, partial)
        partial.replace(path)


class TapSource:
    """Yields batches of the branch tap for a data split, computed once and kept if it fits.

    ``pooling`` (a sequence head that owns no layers: head-only) keeps each example's pooled
    vector instead of its token states, as a one-token sequence the head's pooling returns
    unchanged. Training batches are shuffled; with ``group_by_length`` examples of similar length
    share a batch (less padding computed), the batches' order still random. Prediction batches
    go shortest first; answers are keyed by example index.
    """

    def __init__(
        self,
        trunk: Trunk,
        branch: int,
        encoded: Encoded,
        hidden_size: int,
        batch_size: int,
        uses_token_types: bool,
        cache_limit_bytes: int,
        desc: str = "",
        pooling: str | None = None,
        group_by_length: bool = True,
        store: FeatureStore | None = None,
    ) -> None:
        self.trunk, self.branch, self.encoded = trunk, branch, encoded
        self.batch_size = batch_size
        self.types = uses_token_types
        self.pooling = pooling
        self.group_by_length = group_by_length
        tokens = sum(len(ids) for ids in encoded.ids)
        self.cached: list[torch.Tensor] | None = None
        if tokens * hidden_size * 4 > cache_limit_bytes:
            return
        key: tuple[object, ...] = ()
        if store is not None:
            # What the tap depends on: the encoder (its modules, in this process), the examples'
            # token ids, the tap, how rows are pooled.
            ids = hashlib.sha256(repr(encoded.ids).encode()).hexdigest()
            key = (id(trunk.embeddings), ids, branch, pooling, uses_token_types, hidden_size)
            self.cached = store.load(key)
        if self.cached is None:
            started = time.perf_counter()
            cached: dict[int, torch.Tensor] = {}
            # Similar lengths together: less padding computed once.
            order = sorted(range(len(encoded.ids)), key=lambda i: len(encoded.ids[i]))
            chunks = [order[i : i + 64] for i in range(0, len(order), 64)]
            for chunk in progress(chunks, desc or f"tap {branch} cache"):
                taps, mask = self._run(chunk)
                for row, i in enumerate(chunk):
                    cached[i] = taps[row, : int(mask[row].sum())].clone()
            self.cached = [cached[i] for i in range(len(encoded.ids))]
            if store is not None:
                store.save(key, self.cached, time.perf_counter() - started)

    def _pool(self, taps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's pooled vector, as a one-token sequence."""
        if self.pooling == "mean":
            pooled = mean_pool(taps, mask)
        elif self.pooling == "cls":
            pooled = taps[:, 0]
        else:
            raise ValueError(f"unknown pooling {self.pooling!r}")
        return pooled[:, None], torch.ones(mask.shape[0], 1, dtype=mask.dtype)

    def _run(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.tensor(self.encoded.ids[i]) for i in index]
        ids = _pad(rows, 0)
        mask = _mask([len(r) for r in rows], ids.shape[1])
        types = torch.zeros_like(ids) if self.types else None
        with torch.no_grad():
            hidden = self.trunk.embed(ids, types)
            if self.branch:
                hidden = run_layers(self.trunk.layers[: self.branch], hidden, mask)[-1]
        if self.pooling is not None:
            return self._pool(hidden, mask)
        return hidden, mask

    def batches(self, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        for index in self._order(shuffle, generator):
            if self.cached is not None:
                hidden = _pad([self.cached[i] for i in index], 0.0)
                mask = _mask([self.cached[i].shape[0] for i in index], hidden.shape[1])
            else:
                hidden, mask = self._run(index)
            yield Batch(hidden, mask, self._labels(index, mask.shape[1]), index)

    def _order(self, shuffle: bool, generator: torch.Generator | None) -> list[list[int]]:
        """Example indices, batch by batch."""
        n, size = len(self.encoded.ids), self.batch_size
        length = (
            (lambda i: self.cached[i].shape[0])  # type: ignore[index]
            if self.cached is not None
            else (lambda i: len(self.encoded.ids[i]))
        )
        if not shuffle:
            order = sorted(range(n), key=length)
            return [order[i : i + size] for i in range(0, n, size)]
        order = torch.randperm(n, generator=generator).tolist()
        if not self.group_by_length:
            return [order[i : i + size] for i in range(0, n, size)]
        batches = []
        for start in range(0, n, size * GROUP_BATCHES):
            group = sorted(order[start : start + size * GROUP_BATCHES], key=length)
            batches += [group[i : i + size] for i in range(0, len(group), size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def _labels(self, index: list[int], width: int) -> torch.Tensor:
        labels = self.encoded.labels
        if self.encoded.word_tokens is None:
            return torch.tensor([labels[i] for i in index])
        rows = [torch.tensor(labels[i][:width]) for i in index]  # type: ignore[index]
        return _pad(rows, IGNORE)
