from __future__ import annotations

import numpy as np
import pytest

from multitask_serve.service.postprocess import classifications, entities, softmax

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def onehot(tags: list[str]) -> np.ndarray:
    probs = np.full((len(tags), len(LABELS)), 0.05, dtype=np.float32)
    for i, tag in enumerate(tags):
        probs[i, LABELS.index(tag)] = 0.8
    return probs


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    assert np.allclose(p.sum(-1), 1) and p[0, 0] == pytest.approx(1.0)


def test_classification_reports_best_label_and_every_score():
    (out,) = classifications(np.array([[0.2, 0.7, 0.1]]), ("a", "b", "c"))
    assert out["label"] == "b" and out["score"] == pytest.approx(0.7)
    assert list(out["scores"]) == ["a", "b", "c"]


def test_bio_tags_become_character_spans_and_word_pieces_follow_their_first_piece():
    text = "John Smithson lives in New York"
    # [CLS] john smith ##son lives in new york [SEP]
    offsets = [(0, 0), (0, 4), (5, 10), (10, 13), (14, 19), (20, 22), (23, 26), (27, 31), (0, 0)]
    word_ids = [None, 0, 1, 1, 2, 3, 4, 5, None]
    tags = ["O", "B-PER", "I-PER", "O", "O", "O", "B-LOC", "I-LOC", "O"]  # ##son's own tag ignored
    spans = entities(text, onehot(tags), offsets, word_ids, LABELS)
    assert [(s["entity"], s["text"], s["start"], s["end"]) for s in spans] == [
        ("PER", "John Smithson", 0, 13),
        ("LOC", "New York", 23, 31),
    ]
    assert spans[0]["score"] == pytest.approx(0.8)


def test_an_inside_tag_without_its_begin_starts_an_entity_and_a_type_change_splits():
    text = "Paris John"
    offsets = [(0, 0), (0, 5), (6, 10), (0, 0)]
    spans = entities(
        text, onehot(["O", "I-LOC", "I-PER", "O"]), offsets, [None, 0, 1, None], LABELS
    )
    assert [(s["entity"], s["text"]) for s in spans] == [("LOC", "Paris"), ("PER", "John")]


def test_no_entities_gives_an_empty_list():
    assert (
        entities("hi", onehot(["O", "O", "O"]), [(0, 0), (0, 2), (0, 0)], [None, 0, None], LABELS)
        == []
    )
