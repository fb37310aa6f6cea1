"""One table of per-kind behaviour (modelrepo/types.py ``KINDS``): every layer derives from it."""

from __future__ import annotations

import struct

import pytest

from multitask_serve.modelrepo.types import KINDS, HeadSpec, Kind, SpecError
from multitask_serve.service import oip
from multitask_serve.service.outputs import FORMS
from multitask_serve.service.types import JobResult, TaskResult

HIDDEN = 8
LABELS = {
    Kind.EMBEDDING: (),
    Kind.ZERO_SHOT: ("sport", "politics"),
    Kind.SEQUENCE_CLASSIFICATION: ("neg", "neu", "pos"),
    Kind.TOKEN_CLASSIFICATION: ("O", "B-PER", "I-PER", "B-LOC"),
}


def head(kind: Kind) -> HeadSpec:
    return HeadSpec("t", kind, 2, HIDDEN, "ab" * 32, labels=LABELS[kind])


def test_every_kind_has_one_entry_and_every_layer_knows_its_names():
    assert set(KINDS) == set(Kind)
    for traits in KINDS.values():
        assert traits.decode in FORMS and traits.decode in oip.TENSORS
        assert oip.TRUNCATED.name not in {t.name for t in oip.TENSORS[traits.decode]}
    assert set(oip.TENSORS) == set(FORMS)


@pytest.mark.parametrize("kind", list(Kind))
def test_probe_shape_derives_from_the_table(kind):
    traits, spec = KINDS[kind], head(kind)
    width = HIDDEN if traits.width == "hidden" else len(LABELS[kind])
    assert spec.output_width == width
    assert spec.output_shape(3, 11) == ((3, 11, width) if traits.per_token else (3, width))
    assert spec.output_name == traits.output


def test_probe_shapes_stay_what_they_were():
    assert head(Kind.EMBEDDING).output_shape(2, 9) == (2, HIDDEN)
    assert head(Kind.ZERO_SHOT).output_shape(2, 9) == (2, 2)
    assert head(Kind.SEQUENCE_CLASSIFICATION).output_shape(2, 9) == (2, 3)
    assert head(Kind.TOKEN_CLASSIFICATION).output_shape(2, 9) == (2, 9, 4)
    assert [KINDS[k].output for k in Kind] == ["embedding", "logits", "logits", "logits"]


@pytest.mark.parametrize("kind", list(Kind))
def test_oip_metadata_derives_from_the_table(kind):
    spec = head(kind)
    meta = oip.outputs_meta(spec)
    tensors = oip.TENSORS[KINDS[kind].decode]
    assert [m["name"] for m in meta] == [t.name for t in tensors] + ["truncated", "windows"]
    for m, t in zip(meta, tensors, strict=False):
        assert m["datatype"] == t.datatype
        assert m["shape"] == ([-1, spec.output_width] if t.wide else [-1])
    assert meta[-2:] == [
        {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
        {"name": "windows", "datatype": "INT32", "shape": [-1]},
    ]


def test_oip_metadata_stays_what_it_was():
    assert oip.outputs_meta(head(Kind.EMBEDDING))[0] == {
        "name": "embedding",
        "datatype": "FP32",
        "shape": [-1, HIDDEN],
    }
    assert oip.outputs_meta(head(Kind.TOKEN_CLASSIFICATION))[:-2] == [
        {"name": "entities", "datatype": "BYTES", "shape": [-1]}
    ]
    for kind in (Kind.ZERO_SHOT, Kind.SEQUENCE_CLASSIFICATION):
        n = len(LABELS[kind])
        assert oip.outputs_meta(head(kind))[:-2] == [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, n]},
        ]


def test_oip_tensors_follow_the_metadata():
    rows = {
        Kind.EMBEDDING: [[0.5] * HIDDEN, [0.25] * HIDDEN],
        Kind.ZERO_SHOT: [
            {"label": "sport", "score": 0.75, "scores": {"sport": 0.75, "politics": 0.25}}
        ]
        * 2,
        Kind.SEQUENCE_CLASSIFICATION: [
            {"label": "pos", "score": 0.5, "scores": {"neg": 0.25, "neu": 0.25, "pos": 0.5}}
        ]
        * 2,
        Kind.TOKEN_CLASSIFICATION: [[], [{"entity": "PER", "start": 0, "end": 4}]],
    }
    done = JobResult({}, truncated=[False, True], windows=[1, 3])
    for kind in Kind:
        spec = head(kind)
        made = oip._tensors(spec, TaskResult("t", 1, str(kind), rows[kind]), done)
        meta = oip.outputs_meta(spec)
        assert [(t.name, t.datatype) for t in made] == [(m["name"], m["datatype"]) for m in meta]
        assert [t.shape for t in made] == [[2, *m["shape"][1:]] for m in meta]
        for t in made:
            size = 2 * (t.shape[1] if len(t.shape) == 2 else 1)
            assert len(t.data) == size
    (label, score, scores, truncated, windows) = oip._tensors(
        head(Kind.SEQUENCE_CLASSIFICATION),
        TaskResult("t", 1, "sequence-classification", rows[Kind.SEQUENCE_CLASSIFICATION]),
        done,
    )
    assert label.data == ["pos", "pos"] and score.data == [0.5, 0.5]
    assert scores.data == [0.25, 0.25, 0.5] * 2 and truncated.data == [False, True]
    assert windows.data == [1, 3] and windows.encode(True)[1] == struct.pack("<2i", 1, 3)


@pytest.mark.parametrize("kind", list(Kind))
def test_head_json_label_rule_follows_the_table(kind):
    if KINDS[kind].labelled:
        with pytest.raises(SpecError, match=f"a {kind} head needs labels"):
            HeadSpec("t", kind, 2, HIDDEN, "ab" * 32)
    else:
        with pytest.raises(SpecError, match=f"an {kind} head has no labels"):
            HeadSpec("t", kind, 2, HIDDEN, "ab" * 32, labels=("a",))
