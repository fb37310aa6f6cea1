from __future__ import annotations

import json

import pytest

from multitask_serve.modelrepo.types import HeadSpec, Kind, SpecError, TrunkSpec, TrunkVariant

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


INT8 = TrunkVariant("model.int8.onnx", "e" * 64, "dynamic int8", 0.1, 0.99, {"onnxruntime": "1"})


def test_trunk_variants_round_trip_and_a_trunk_json_without_them_still_reads():
    spec = TrunkSpec("m", 6, 384, 256, ("input_ids",), "f" * 64, variants={"int8": INT8})
    assert TrunkSpec.from_json(spec.to_json()) == spec
    assert spec.precisions == ("fp32", "int8")
    data = json.loads(spec.to_json())
    del data["variants"]
    assert TrunkSpec.from_json(json.dumps(data)).variants == {}


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"fp32": {}}, "invalid variant name 'fp32'"),
        ({"Int 8": {}}, "invalid variant name"),
        ({"int8": {"file": "../model.onnx", "fingerprint": "e", "method": "m"}}, "plain file"),
        ({"int8": {"file": "model.int8.onnx", "method": "m"}}, "missing field 'fingerprint'"),
        ([], "'variants' must be an object"),
    ],
)
def test_malformed_trunk_variants_are_refused(variants, message):
    data = json.loads(TrunkSpec("m", 6, 384, 256, ("a",), "f" * 64).to_json())
    data["variants"] = variants
    with pytest.raises(SpecError, match=message):
        TrunkSpec.from_json(json.dumps(data))


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
        ({"task": "mood\n"}, "invalid task name"),  # ``$`` alone would match before the newline
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
