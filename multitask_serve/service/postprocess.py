"""The arithmetic of head outputs: softmax and labels, BIO tags to character spans, unit vectors.

Which head uses which is service/outputs.py's table.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np


def unit(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays as it is)."""
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else vector


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return out


def classifications(probs: np.ndarray, labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """One result per row; converts the batch to Python floats once, not value by value."""
    return [
        {"label": labels[best], "score": row[best], "scores": dict(zip(labels, row, strict=True))}
        for best, row in zip(probs.argmax(axis=-1).tolist(), probs.tolist(), strict=True)
    ]


@lru_cache(maxsize=64)
def _tags(labels: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """Per label: (BIO prefix, entity type), and whether it tags an entity at all."""
    parsed = tuple((prefix, entity) for prefix, _, entity in (t.partition("-") for t in labels))
    is_entity = np.array([p in ("B", "I") and bool(e) for p, e in parsed], dtype=bool)
    return parsed, is_entity


def _words(
    offsets: list[tuple[int, int]],
    word_ids: list[int | None],
    label_ids: np.ndarray,
    scores: np.ndarray,
) -> list[tuple[int, int, int, float]]:
    """(start, end, label id, score) per word; a word takes its first word piece's label."""
    words: list[tuple[int, int, int, float]] = []
    last_word: int | None = None
    for i, word in enumerate(word_ids):
        if word is None:
            continue
        start, end = offsets[i]
        if word == last_word:
            s, _, label, score = words[-1]
            words[-1] = (s, end, label, score)
        else:
            words.append((start, end, int(label_ids[i]), float(scores[i])))
        last_word = word
    return words


def entities(
    text: str,
    probs: np.ndarray,
    offsets: list[tuple[int, int]],
    word_ids: list[int | None],
    labels: tuple[str, ...],
) -> list[dict[str, Any]]:
    """BIO tags over words -> entity spans with character offsets into ``text``.

    An ``I-X`` that does not continue an ``X`` entity starts one (the lenient reading most taggers'
    outputs need); the entity's score is the mean of its words' scores.
    """
    label_ids = probs.argmax(axis=-1)
    scores = probs.max(axis=-1)
    parsed, _ = _tags(labels)
    spans: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    word_scores: list[float] = []

    def close() -> None:
        nonlocal current
        if current is not None:
            current["score"] = float(np.mean(word_scores))
            current["text"] = text[current["start"] : current["end"]]
            spans.append(current)
        current = None

    for start, end, label_id, score in _words(offsets, word_ids, label_ids, scores):
        prefix, entity = parsed[label_id]
        if prefix not in ("B", "I") or not entity:
            close()
            continue
        if prefix == "I" and current is not None and current["entity"] == entity:
            current["end"] = end
            word_scores.append(score)
            continue
        close()
        current = {"entity": entity, "start": start, "end": end}
        word_scores = [score]
    close()
    return spans


def entity_rows(
    probs: np.ndarray, attention_mask: np.ndarray, labels: tuple[str, ...]
) -> list[bool]:
    """Per text, whether any of its tokens' best label tags an entity: most texts have none, and
    need no walk over their words."""
    _, is_entity = _tags(labels)
    tagged: list[bool] = (
        (is_entity[probs.argmax(axis=-1)] & (attention_mask != 0)).any(axis=1).tolist()
    )
    return tagged


# How a text's windows' label scores become one answer (service/outputs.py ``Classes.pool``):
# each window's probabilities, weighted by the tokens of text it read, averaged. Chosen on the
# BBC test articles among the rules below (bench/long_texts.py; BENCHMARKS.md, long texts).
WINDOW_POOLING = "mean"


def pool_probabilities(
    logits: np.ndarray, weights: np.ndarray, rule: str | None = None
) -> np.ndarray:
    """One probability vector from per-window ``logits`` (windows, labels), each window weighted
    by ``weights`` (its tokens of text): ``mean`` of the windows' probabilities, softmax of the
    mean ``logits``, or per label the ``max`` probability of any window, renormalised (None:
    ``WINDOW_POOLING``, read at each call, which is what bench/long_texts.py varies)."""
    rule = rule or WINDOW_POOLING
    w = weights.astype(np.float64) / weights.sum()
    if rule == "logits":
        return softmax((w[:, None] * logits.astype(np.float64)).sum(axis=0)).astype(np.float32)
    probs = softmax(logits.astype(np.float64))
    if rule == "mean":
        pooled = (w[:, None] * probs).sum(axis=0)
    elif rule == "max":
        best = probs.max(axis=0)
        pooled = best / best.sum()
    else:
        raise ValueError(f"unknown window pooling {rule!r}: mean, logits or max")
    out: np.ndarray = pooled.astype(np.float32)
    return out


def pool_vectors(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One unit vector from per-window unit vectors: their mean, each window weighted by its tokens
    of text, scaled to length 1 (a window's vector is the mean of its tokens' states, so this is
    close to the mean over the whole text, overlapping tokens counted once per window)."""
    mean = (weights.astype(np.float64)[:, None] * vectors.astype(np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(mean))
    out: np.ndarray = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out
