"""``mts report``: which sizes each invocation trains on (the runs themselves are stubbed)."""

from __future__ import annotations

from typing import Any

import pytest

from multitask_serve.cli import main as mts
from multitask_serve.training import report, report_md


@pytest.fixture
def calls(monkeypatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def run_report(encoder: object, tasks: dict, seeds: tuple, scenario: Any = None) -> dict:
        seen.append({"tasks": tasks, "seeds": seeds, "scenario": scenario})
        return {}

    monkeypatch.setattr(report, "run_report", run_report)
    monkeypatch.setattr(report, "write_results", lambda results, out: out / "results.json")
    monkeypatch.setattr(report_md, "render", lambda results, out: out / "REPORT.md")
    monkeypatch.setattr("multitask_serve.export.encoder.load_encoder", lambda path=None: None)
    return seen


def test_the_default_report_trains_on_realistic_data(calls, tmp_path):
    assert mts(["report", "--out", str(tmp_path)]) == 0
    tasks = calls[0]["tasks"]
    assert tasks["sentiment"].max_train == 8000
    assert tasks["topic"].max_train is None and tasks["ner"].max_train is None
    assert all(task.max_eval is None for task in tasks.values())
    assert calls[0]["seeds"] == (0, 1, 2) and calls[0]["scenario"] == ("sentiment", "ner")


def test_quick_takes_the_small_sample_and_flags_still_override_it(calls, tmp_path):
    out = ["--out", str(tmp_path)]
    assert mts(["report", "--quick", *out]) == 0
    assert calls[0]["tasks"] == report.QUICK_TASKS
    assert mts(["report", "--quick", "--max-train", "none", "--tasks", "topic", *out]) == 0
    assert list(calls[1]["tasks"]) == ["topic"] and calls[1]["tasks"]["topic"].max_train is None
    assert calls[1]["tasks"]["topic"].max_eval == report.QUICK_TASKS["topic"].max_eval
    assert calls[1]["scenario"] is None


def test_the_report_trains_in_mixed_precision_where_the_cpu_has_it_unless_told(calls, tmp_path):
    out = ["--out", str(tmp_path)]
    assert mts(["report", *out]) == 0
    assert {task.mixed_precision for task in calls[0]["tasks"].values()} == {"auto"}
    assert report.run_config("ner", calls[0]["tasks"]["ner"], "top-2", 0).mixed_precision == "auto"
    assert mts(["report", "--mixed-precision", "none", *out]) == 0
    assert {task.mixed_precision for task in calls[1]["tasks"].values()} == {"none"}
    assert report.run_config("ner", calls[1]["tasks"]["ner"], "full", 1).mixed_precision == "none"
