"""Bootstrap confidence intervals on test metrics: which differences a reader can tell from noise.

A run's test predictions are kept as per-example outcomes from which its metric is recomputed on
any resample of the test set: (gold, predicted) class ids for classification, each sentence's
(true positive, false positive, false negative) entity counts for tagging. A resample draws test
examples with replacement; every run of a task is scored on the same draws, so two strategies
compare paired. A strategy's figure is its mean over seeds, so the interval covers test-set noise
for that mean (the seeds' spread is reported beside it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from multitask_serve.training.metrics import chunks

RESAMPLES = 1000
LEVEL = 0.95


def class_outcomes(gold: Sequence[int], pred: Sequence[int]) -> np.ndarray:
    """(n, 2): gold and predicted class id per example."""
    return np.array([gold, pred], dtype=np.int64).T.reshape(-1, 2)


def entity_outcomes(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> np.ndarray:
    """(n, 3): per sentence, entities found (type and span exact), predicted wrongly, missed."""
    rows = []
    for g, p in zip(gold, pred, strict=True):
        gc, pc = chunks(g), chunks(p)
        rows.append((len(gc & pc), len(pc - gc), len(gc - pc)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def outcomes(gold: Sequence[Any], pred: Sequence[Any], per_token: bool) -> np.ndarray:
    """Decoded answers (class ids, or BIO tags per word when ``per_token``) as outcomes."""
    return entity_outcomes(gold, pred) if per_token else class_outcomes(gold, pred)


def draws(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(1 + resamples, n) example counts: row 0 is the test set itself, then each resample's."""
    rng = np.random.default_rng(seed)
    counts = np.ones((1 + resamples, n), dtype=np.int64)
    for r in range(resamples):
        counts[1 + r] = np.bincount(rng.integers(0, n, n), minlength=n)
    return counts


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(tp.shape, dtype=float), where=denom > 0)


def scores(outcomes: np.ndarray, counts: np.ndarray, num_labels: int) -> np.ndarray:
    """The metric (macro-F1, or entity F1 for 3-column outcomes) on each row of ``counts``."""
    if outcomes.shape[1] == 3:
        tp, fp, fn = (counts @ outcomes[:, i] for i in range(3))
        return _f1(tp, fp, fn)
    gold, pred = outcomes[:, 0], outcomes[:, 1]
    per_label = []
    for label in range(num_labels):
        tp = counts @ ((gold == label) & (pred == label))
        fp = counts @ ((gold != label) & (pred == label))
        fn = counts @ ((gold == label) & (pred != label))
        per_label.append(_f1(tp, fp, fn))
    return np.mean(per_label, axis=0)


def _mean_over_seeds(runs: Sequence[np.ndarray], counts: np.ndarray, num_labels: int) -> np.ndarray:
    return np.mean([scores(run, counts, num_labels) for run in runs], axis=0)


def _interval(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(values[1:], [tail, 100 - tail])
    return float(low), float(high)


def interval(runs: Sequence[np.ndarray], counts: np.ndarray, num_labels: int) -> dict[str, float]:
    """The seed-mean metric on the test set and its bootstrap interval."""
    values = _mean_over_seeds(runs, counts, num_labels)
    low, high = _interval(values)
    return {"mean": float(values[0]), "low": low, "high": high}


def difference(
    runs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    counts: np.ndarray,
    num_labels: int,
) -> dict[str, float | bool]:
    """``runs`` minus ``reference`` (seed means), paired on the same resamples; ``within_noise``
    when the interval holds 0."""
    values = _mean_over_seeds(runs, counts, num_labels) - _mean_over_seeds(
        reference, counts, num_labels
    )
    low, high = _interval(values)
    within = low <= 0 <= high
    return {"difference": float(values[0]), "low": low, "high": high, "within_noise": within}
