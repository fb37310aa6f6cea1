"""head.json's precision: recorded for int8 copies, fp32 for every head.json written before it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from multitask_serve.modelrepo.types import HeadSpec, SpecError
from tests.unit.test_spec import HEAD


def test_an_int8_head_json_round_trips_with_its_precision():
    int8 = dataclasses.replace(HEAD, precision="int8")
    assert json.loads(int8.to_json())["precision"] == "int8"
    assert HeadSpec.from_json(int8.to_json()) == int8


def test_a_head_json_without_precision_reads_as_fp32():
    data = json.loads(HEAD.to_json())
    del data["precision"]
    assert HeadSpec.from_json(json.dumps(data)).precision == "fp32"


@pytest.mark.parametrize(
    ("value", "message"),
    [(8, "field 'precision' has type int"), ("INT 8", "invalid precision 'INT 8'")],
)
def test_a_malformed_precision_is_refused_with_a_message_naming_it(value, message):
    data = json.loads(HEAD.to_json()) | {"precision": value}
    with pytest.raises(SpecError, match=message):
        HeadSpec.from_json(json.dumps(data))
