"""The report's sentences are computed from the numbers: check them on a small result set."""

from __future__ import annotations

import json
from pathlib import Path

from multitask_serve.training.report_md import cheapest_at_target, depth_curves, markdown, render

REPORTS = Path(__file__).resolve().parents[2] / "reports"


def row(f1: float, ratio: float | None, params: int = 1000) -> dict:
    return {
        "test": {"accuracy": f1, "macro_f1": f1},
        "trainable_params": params,
        "train_seconds": 1.0,
        "peak_rss_mb": 100.0,
        "serving_ratio": ratio,
        "branch_layer": 6,
    }


def task(**rows: list[dict]) -> dict:
    return {
        "config": {"max_length": 64, "epochs": 3},
        "data": "d",
        "sizes": [1, 1, 1],
        "trunk_seconds": 0.01,
        "rows": rows,
    }


def test_cheapest_strategy_reaching_97_percent_of_full_is_named_with_its_cost():
    t = task(
        **{
            "head-only": [row(0.80, 0.001)],
            "top-1": [row(0.975, 0.17)],
            "top-2": [row(0.99, 0.33)],
            "full": [row(1.0, 1.0)],
        }
    )
    assert cheapest_at_target(t).startswith("**top-1** is the cheapest")
    assert "17.0% of the trunk" in cheapest_at_target(t)
    t["rows"]["top-1"] = [row(0.9, 0.17)]
    assert cheapest_at_target(t).startswith("**top-2**")


def test_rendered_report_states_scenario_three_and_orders_strategies(tmp_path):
    results = {
        "machine": {"cpu": "x", "cores": 2, "torch": "t", "threads": 2, "python": "3.11"},
        "seeds": [0, 1],
        "total_seconds": 60.0,
        "tasks": {
            "sentiment": task(
                **{
                    "full": [row(0.70, 1.0), row(0.72, 1.0)],
                    "frozen": [row(0.40, 0.002)],
                    "head-only": [row(0.60, 0.001), row(0.62, 0.001)],
                }
            )
        },
        "scenario3": {
            "task_a": "sentiment",
            "task_b": "ner",
            "k": 2,
            "a_before": {"macro_f1": 0.6},
            "copies": {
                "a_after": {"macro_f1": 0.6},
                "b_test": {"entity_f1": 0.5},
                "a_logits_max_abs_change": 0.0,
                "a_predictions_changed": 0.0,
            },
            "shared": {
                "a_after": {"macro_f1": 0.4},
                "b_test": {"entity_f1": 0.52},
                "a_logits_max_abs_change": 2.5,
                "a_predictions_changed": 0.25,
            },
        },
    }
    text = render(results, tmp_path).read_text()
    assert "Whole run: 1.0 min." in text and "read back" not in text
    assert "drops to 0.400 (-0.200; 25.0% of its test predictions change" in text
    assert "exactly 0" in text and "entity_f1 0.500 (shared: 0.520)" in text
    assert text.index("| frozen") < text.index("| head-only") < text.index("| full")
    assert "0.610 ± 0.014" in text
    assert (tmp_path / "sentiment.png").stat().st_size > 1000


def test_the_cheapest_strategy_is_chosen_on_validation_not_test():
    def scored(val: float, test: float, ratio: float) -> dict:
        r = row(test, ratio)
        r["validation"] = {"accuracy": val, "macro_f1": val}
        return r

    t = task(
        **{
            # top-1 looks good on test but not on validation: it must not be picked.
            "top-1": [scored(0.90, 0.99, 0.17)],
            "top-2": [scored(0.98, 0.97, 0.33)],
            "full": [scored(1.0, 1.0, 1.0)],
        }
    )
    assert cheapest_at_target(t).startswith("**top-2** is the cheapest")


def test_progressive_depth_curves_are_listed_with_the_served_depth():
    r = row(0.8, 0.2)
    r["branch_layer"] = 4
    r["depth_curve"] = [
        {"depth": d, "branch_layer": 6 - d, "score": s} for d, s in [(1, 0.7), (2, 0.8), (3, 0.805)]
    ]
    lines = depth_curves(task(progressive=[r]))
    assert lines[0] == (
        "- Progressive, seed run 1: validation by depth 1: 0.700, 2: 0.800, 3: 0.805; "
        "served depth 2."
    )


def test_bootstrap_intervals_are_shown_and_say_which_gaps_are_noise(tmp_path):
    t = task(
        **{
            "top-2": [row(0.70, 0.33), row(0.72, 0.33)],
            "head-only": [row(0.60, 0.001), row(0.62, 0.001)],
            "full": [row(0.71, 1.0), row(0.72, 1.0)],
        }
    )
    t["bootstrap"] = {
        "resamples": 1000,
        "level": 0.95,
        "intervals": {
            "top-2": {"mean": 0.71, "low": 0.69, "high": 0.73},
            "head-only": {"mean": 0.61, "low": 0.59, "high": 0.63},
            "full": {"mean": 0.715, "low": 0.695, "high": 0.735},
        },
        "vs_full": {
            "top-2": {"difference": -0.005, "low": -0.02, "high": 0.01, "within_noise": True},
            "head-only": {"difference": -0.105, "low": -0.13, "high": -0.08, "within_noise": False},
        },
    }
    results = {
        "machine": {"cpu": "x", "cores": 2, "torch": "t", "threads": 2, "python": "3.11"},
        "seeds": [0, 1],
        "total_seconds": 60.0,
        "tasks": {"sentiment": t},
    }
    text = render(results, tmp_path).read_text()
    assert "| macro_f1 seed mean, 95% CI | vs full, 95% CI |" in text
    assert "| 0.710 [0.690, 0.730] | -0.005 [-0.020, +0.010] noise |" in text
    assert "| 0.610 [0.590, 0.630] | -0.105 [-0.130, -0.080] lower |" in text
    assert "top-2 99.3% (-0.005 [-0.020, +0.010], within noise)" in text
    assert "head-only 85.3% (-0.105 [-0.130, -0.080], outside noise)" in text


def test_rendered_report_states_what_shared_taps_saved(tmp_path):
    t = task(**{"full": [row(0.70, 1.0)]})
    t.update(taps_reused=7, taps_seconds_saved=150.0)
    results = {
        "machine": {"cpu": "x", "cores": 2, "torch": "t", "threads": 2, "python": "3.11"},
        "seeds": [0],
        "total_seconds": 600.0,
        "tasks": {"sentiment": t, "topic": {**t, "taps_reused": 3, "taps_seconds_saved": 30.0}},
    }
    text = render(results, tmp_path).read_text()
    assert (
        "Whole run: 10.0 min. Each task's frozen taps were computed once: 10 were read back" in text
    )
    assert "saving 3.0 min of trunk time" in text


def test_rendered_report_states_which_tasks_trained_in_mixed_precision(tmp_path):
    results = {
        "machine": {"cpu": "x", "cores": 2, "torch": "t", "threads": 2, "python": "3.11"},
        "seeds": [0],
        "total_seconds": 60.0,
        "tasks": {
            "sentiment": {**task(full=[row(0.7, 1.0)]), "mixed_precision": "bf16"},
            "topic": {**task(full=[row(0.9, 1.0)]), "mixed_precision": "none"},
            "ner": task(full=[row(0.5, 1.0)]),
        },
    }
    sections = render(results, tmp_path).read_text().split("\n## ")
    said = [s.split("\n")[0] for s in sections if "under bf16 autocast" in s]
    assert said == ["sentiment"]


def test_the_committed_report_is_what_its_committed_results_render():
    """REPORT.md is generated: every figure in it is results.json's, and rendering from the file
    read back (its keys sorted) gives what the run rendered from memory."""
    results = json.loads((REPORTS / "results.json").read_text())
    assert markdown(results) == (REPORTS / "REPORT.md").read_text()
