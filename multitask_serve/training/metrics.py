"""Quality metrics: accuracy and macro-F1 for classification, entity-level P/R/F1 for BIO tags.

Entity chunks follow conlleval: a chunk starts at ``B-X``, or at an ``I-X`` that does not continue
an ``X`` chunk, and an entity counts as found only if its type and exact word span match.
"""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / max(len(gold), 1)


def macro_f1(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> float:
    scores = []
    for label in range(num_labels):
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, pred, strict=True))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / max(num_labels, 1)


def chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first word, last word) for every entity in a BIO sequence."""
    found: set[tuple[str, int, int]] = set()
    current: tuple[str, int] | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        continues = prefix == "I" and current is not None and current[0] == kind
        if current is not None and not continues:
            found.add((current[0], current[1], i - 1))
            current = None
        if prefix == "B" or (prefix == "I" and not continues):
            current = (kind, i)
    return found


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    tp = fp = fn = 0
    for g, p in zip(gold, pred, strict=True):
        gc, pc = chunks(g), chunks(p)
        tp += len(gc & pc)
        fp += len(pc - gc)
        fn += len(gc - pc)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}


def per_class(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support (gold count) per label."""
    pairs = list(zip(gold, pred, strict=True))
    return {
        label: _prf(
            sum(g == label and p == label for g, p in pairs),
            sum(g != label and p == label for g, p in pairs),
            sum(g == label and p != label for g, p in pairs),
        )
        for label in labels
    }


def per_entity_type(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Entity-level (exact span and type) precision, recall, F1 and support per entity type."""
    counts: dict[str, list[int]] = {}
    for g, p in zip(gold, pred, strict=True):
        gc, pc = chunks(g), chunks(p)
        for chunk in gc | pc:
            c = counts.setdefault(chunk[0], [0, 0, 0])
            c[0 if chunk in gc and chunk in pc else 1 if chunk in pc else 2] += 1
    return {kind: _prf(*counts[kind]) for kind in sorted(counts)}


def confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts: row = gold label, column = predicted label, in ``labels`` order."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        matrix[index[g]][index[p]] += 1
    return matrix
