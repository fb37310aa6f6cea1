"""The report's sentences are computed from the numbers: check them on a small result set."""

from __future__ import annotations

from multitask_serve.training.report_md import cheapest_at_target, render


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
            "task_b": "topic",
            "k": 2,
            "a_before": {"macro_f1": 0.6},
            "copies": {
                "a_after": {"macro_f1": 0.6},
                "b_test": {"macro_f1": 0.9},
                "a_logits_max_abs_change": 0.0,
            },
            "shared": {
                "a_after": {"macro_f1": 0.4},
                "b_test": {"macro_f1": 0.91},
                "a_logits_max_abs_change": 2.5,
            },
        },
    }
    text = render(results, tmp_path).read_text()
    assert "drops to 0.400 (-0.200" in text and "exactly 0" in text
    assert text.index("| frozen") < text.index("| head-only") < text.index("| full")
    assert "0.610 ± 0.014" in text
    assert (tmp_path / "sentiment.png").stat().st_size > 1000
