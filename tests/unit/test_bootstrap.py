"""Bootstrap intervals: the test set itself gives the plain metric; intervals tell noise apart."""

from __future__ import annotations

import random

import numpy as np

from multitask_serve.training import bootstrap
from multitask_serve.training.metrics import entity_scores, macro_f1


def noisy(gold: list[int], accuracy: float, seed: int, labels: int = 3) -> list[int]:
    rng = random.Random(seed)
    return [g if rng.random() < accuracy else rng.randrange(labels) for g in gold]


def test_the_unresampled_row_gives_the_metrics_own_value():
    rng = random.Random(0)
    gold = [rng.randrange(3) for _ in range(300)]
    pred = noisy(gold, 0.7, 1)
    counts = bootstrap.draws(len(gold), resamples=20)
    assert counts[0].tolist() == [1] * len(gold)
    assert (counts.sum(axis=1) == len(gold)).all()
    got = bootstrap.scores(bootstrap.class_outcomes(gold, pred), counts, 3)
    assert abs(got[0] - macro_f1(gold, pred, 3)) < 1e-12
    assert len(set(got[1:].round(6))) > 10  # resamples differ

    tags = ["B-PER", "I-PER", "O", "B-LOC", "O"]
    gold_tags = [rng.sample(tags, len(tags)) for _ in range(200)]
    pred_tags = [[t if rng.random() < 0.8 else "O" for t in row] for row in gold_tags]
    outcomes = bootstrap.entity_outcomes(gold_tags, pred_tags)
    got = bootstrap.scores(outcomes, bootstrap.draws(200, resamples=5), 0)
    assert abs(got[0] - entity_scores(gold_tags, pred_tags)["entity_f1"]) < 1e-12


def test_draws_are_seeded():
    assert np.array_equal(bootstrap.draws(50, 10, seed=3), bootstrap.draws(50, 10, seed=3))
    assert not np.array_equal(bootstrap.draws(50, 10, seed=3), bootstrap.draws(50, 10, seed=4))


def test_interval_holds_the_mean_over_seeds_and_narrows_with_more_examples():
    rng = random.Random(2)
    widths = []
    for n in (200, 3200):
        gold = [rng.randrange(3) for _ in range(n)]
        runs = [bootstrap.class_outcomes(gold, noisy(gold, 0.7, seed)) for seed in range(3)]
        ci = bootstrap.interval(runs, bootstrap.draws(n), 3)
        seed_mean = np.mean([macro_f1(gold, noisy(gold, 0.7, seed), 3) for seed in range(3)])
        assert abs(ci["mean"] - seed_mean) < 1e-12
        assert ci["low"] < ci["mean"] < ci["high"]
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(16)


def test_paired_difference_tells_a_real_gap_from_noise():
    rng = random.Random(3)
    gold = [rng.randrange(3) for _ in range(2000)]
    counts = bootstrap.draws(len(gold))
    base = [bootstrap.class_outcomes(gold, noisy(gold, 0.70, s)) for s in range(3)]
    same = [bootstrap.class_outcomes(gold, noisy(gold, 0.70, s + 10)) for s in range(3)]
    better = [bootstrap.class_outcomes(gold, noisy(gold, 0.80, s + 20)) for s in range(3)]
    assert bootstrap.difference(same, base, counts, 3)["within_noise"]
    gap = bootstrap.difference(better, base, counts, 3)
    assert not gap["within_noise"] and gap["low"] > 0
    itself = bootstrap.difference(base, base, counts, 3)
    assert itself == {"difference": 0.0, "low": 0.0, "high": 0.0, "within_noise": True}
