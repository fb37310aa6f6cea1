from __future__ import annotations

import json

import pytest

from spec.types import HeadSpec, Kind, SpecError, TrunkSpec

HEAD = HeadSpec(
    task="sentiment",
    kind=Kind.SEQUENCE_CLASSIFICATION,
    branch_layer=5,
    hidden_size=384,
    trunk_fingerprint="ab" * 32,
    labels=("neg", "pos"),
    training={"strategy": "top-1", "seed": 0},
)


def test_head_spec_round_trips_through_json():
    assert HeadSpec.from_json(HEAD.to_json()) == HEAD


def test_trunk_spec_round_trips_through_json():
    spec = TrunkSpec("m", 6, 384, 256, ("input_ids", "attention_mask"), "f" * 64, 1e-5)
    assert TrunkSpec.from_json(spec.to_json()) == spec
    assert spec.tap_names[0] == "tap_0" and spec.tap_names[-1] == "tap_6"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 2}, "unsupported schema_version 2"),
        ({"schema_version": None}, "unsupported schema_version"),
        ({"kind": "regression"}, "unknown kind 'regression'"),
        ({"branch_layer": "5"}, "'branch_layer' has type str"),
        ({"branch_layer": True}, "'branch_layer' has type bool"),
        ({"labels": []}, "needs labels"),
        ({"labels": ["a", "a"]}, "unique"),
        ({"labels": [1, 2]}, "labels must be strings"),
        ({"task": "../etc"}, "invalid task name"),
        ({"pooling": "max"}, "unknown pooling"),
    ],
)
def test_malformed_head_json_is_refused_with_a_message_naming_the_problem(change, message):
    data = {**json.loads(HEAD.to_json()), **change}
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        HeadSpec.from_json(json.dumps(data))


def test_missing_field_and_invalid_json_are_named():
    data = json.loads(HEAD.to_json())
    del data["trunk_fingerprint"]
    with pytest.raises(SpecError, match="missing field 'trunk_fingerprint'"):
        HeadSpec.from_json(json.dumps(data))
    with pytest.raises(SpecError, match="not valid JSON"):
        HeadSpec.from_json(b"{")
    with pytest.raises(SpecError, match="not valid JSON"):
        HeadSpec.from_json(b"\xff\xfe")
