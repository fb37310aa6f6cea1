"""MTS_TASKS's selector: names and shell-style globs over task names; empty selects everything."""

from __future__ import annotations

import pytest

from multitask_serve.service.selection import EVERY_TASK, SelectorError, TaskSelector

TASKS = ["embed", "ner", "sentiment", "sentiment-de", "topic", "topic-zs", "topic1"]


def test_an_empty_selector_selects_every_task():
    assert EVERY_TASK.everything and EVERY_TASK.filter(TASKS) == TASKS and str(EVERY_TASK) == "*"


@pytest.mark.parametrize(
    ("patterns", "selected"),
    [
        (["ner"], ["ner"]),
        (["topic*"], ["topic", "topic-zs", "topic1"]),
        (["topic-*", "embed"], ["embed", "topic-zs"]),
        (["topic?"], ["topic1"]),
        (["sentiment-[a-z][a-z]"], ["sentiment-de"]),
        (["[!st]*"], ["embed", "ner"]),
        (["nothing"], []),
    ],
)
def test_names_and_globs_select_the_tasks_they_match(patterns, selected):
    selector = TaskSelector.parse(patterns)
    assert selector.filter(TASKS) == selected
    assert str(selector) == ",".join(patterns)


@pytest.mark.parametrize(
    "pattern", ["", "topic/*", "Topic", "a b", "-x", "x" * 65, "sentiment,", "topic\n"]
)
def test_a_pattern_that_is_no_task_name_or_glob_is_refused(pattern):
    with pytest.raises(SelectorError):
        TaskSelector.parse([pattern])
