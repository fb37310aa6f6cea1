"""The pending-heads plan (modelrepo/pending.py): what a first run still trains, on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from multitask_serve.modelrepo.pending import (
    PENDING_FILE,
    Pending,
    PendingHead,
    drop_pending,
    read_pending,
    write_pending,
)
from multitask_serve.modelrepo.types import SpecError

PLAN = Pending(
    (
        PendingHead("sentiment", {"task": "sentiment", "data": "sentiment", "epochs": 2}),
        PendingHead("ner", {"task": "ner", "data": "ner"}, precision="int8"),
    ),
    encoder="/models/encoder",
)


def test_a_plan_reads_back_as_it_was_written(tmp_path: Path) -> None:
    write_pending(tmp_path, PLAN)
    assert read_pending(tmp_path) == PLAN
    assert [p.name for p in tmp_path.iterdir()] == [PENDING_FILE]  # no temporary file left


def test_no_file_and_an_empty_plan_both_mean_nothing_is_pending(tmp_path: Path) -> None:
    assert read_pending(tmp_path) is None
    write_pending(tmp_path, PLAN)
    write_pending(tmp_path, Pending(()))
    assert not (tmp_path / PENDING_FILE).exists()


def test_dropping_served_tasks_keeps_the_rest_in_order_and_the_last_removes_the_file(
    tmp_path: Path,
) -> None:
    write_pending(tmp_path, PLAN)
    left = drop_pending(tmp_path, {"sentiment", "not-pending"})
    assert left is not None and left.tasks == ["ner"] and left.encoder == PLAN.encoder
    assert read_pending(tmp_path) == left
    assert drop_pending(tmp_path, {"ner"}) is None
    assert not (tmp_path / PENDING_FILE).exists()
    assert drop_pending(tmp_path, {"ner"}) is None  # nothing pending: nothing to do


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"schema_version": 2, "heads": []}',
        '{"schema_version": 1}',
        '{"schema_version": 1, "heads": [{"task": "Bad Name", "config": {}}]}',
        '{"schema_version": 1, "heads": [{"task": "x"}]}',
    ],
)
def test_a_malformed_plan_is_a_spec_error_that_names_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / PENDING_FILE).write_text(text)
    with pytest.raises(SpecError, match=PENDING_FILE):
        read_pending(tmp_path)
