from __future__ import annotations

import pytest

from multitask_serve.training.metrics import accuracy, chunks, entity_scores, macro_f1


def test_chunks_follow_conlleval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-PER"]
    assert chunks(tags) == {("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("PER", 6, 6)}


def test_entity_scores_need_type_and_exact_span():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER span too short: one hit, one miss, one false
    scores = entity_scores(gold, pred)
    assert scores["entity_precision"] == pytest.approx(0.5)
    assert scores["entity_recall"] == pytest.approx(0.5)
    assert scores["entity_f1"] == pytest.approx(0.5)
    assert entity_scores([["O"]], [["O"]])["entity_f1"] == 0.0


def test_accuracy_and_macro_f1():
    gold, pred = [0, 0, 1, 2], [0, 1, 1, 2]
    assert accuracy(gold, pred) == pytest.approx(0.75)
    # per class F1: 2/3, 2/3, 1
    assert macro_f1(gold, pred, 3) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
