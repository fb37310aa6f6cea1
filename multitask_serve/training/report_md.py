"""Render ``results.json`` as REPORT.md and PNG plots; each sentence is computed from numbers."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# Published figures the write-up's scenarios are compared with.
ANCHOR_TOP_QUARTER = 0.90  # top quarter of layers ~90% of full (Lee et al. 2019)
ANCHOR_BRANCHES = 0.996  # per-task top-layer branches, 99.6% of full (CentraBert)
TARGET = 0.97
TASK_ORDER = ("sentiment", "topic", "ner")
STRATEGY_ORDER = ("frozen", "head-only", "top-1", "top-2", "top-3", "progressive", "full")


def _metric(task: dict[str, Any]) -> str:
    first = next(iter(task["rows"].values()))[0]["test"]
    return "entity_f1" if "entity_f1" in first else "macro_f1"


def _stats(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [r["test"][key] for r in rows]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def _fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _ordered(items: dict[str, Any], order: tuple[str, ...] = TASK_ORDER) -> list[tuple[str, Any]]:
    return sorted(items.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)


def task_table(name: str, task: dict[str, Any]) -> list[str]:
    metric = _metric(task)
    full = _stats(task["rows"]["full"], metric)[0] if "full" in task["rows"] else None
    cols = (
        ["accuracy", "macro_f1"]
        if metric == "macro_f1"
        else ["entity_precision", "entity_recall", "entity_f1"]
    )
    boot = task.get("bootstrap")
    level = f"{boot['level']:.0%}" if boot else ""
    head = [
        "strategy",
        *cols,
        *([f"{metric} seed mean, {level} CI", f"vs full, {level} CI"] if boot else []),
        "% of full",
        "trainable params",
        "train s",
        "peak RSS MB",
        "serving cost vs trunk",
        "branch tap",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strat, rows in _ordered(task["rows"], STRATEGY_ORDER):
        cells = [strat]
        for col in cols:
            m, s = _stats(rows, col)
            cells.append(f"{m:.3f} ± {s:.3f}" if len(rows) > 1 else f"{m:.3f}")
        if boot:
            cells += [_ci(boot["intervals"].get(strat)), _vs(boot.get("vs_full", {}).get(strat))]
        m = _stats(rows, metric)[0]
        cells.append(f"{100 * m / full:.1f}%" if full and full > 0 else "-")
        cells.append(_fmt_params(_mean(rows, "trainable_params")))
        cells.append(f"{_mean(rows, 'train_seconds'):.0f}")
        cells.append(f"{_mean(rows, 'peak_rss_mb'):.0f}")
        ratio = rows[0].get("serving_ratio")
        cells.append(f"{100 * ratio:.1f}%" if ratio is not None else "-")
        taps = sorted({r.get("branch_layer", "-") for r in rows}, key=str)
        cells.append(", ".join(str(t) for t in taps))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ci(ci: dict[str, float] | None) -> str:
    return "-" if ci is None else f"{ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def _vs(diff: dict[str, Any] | None) -> str:
    """A difference from full and its interval; "noise" when the interval holds 0."""
    if diff is None:
        return "-"
    verdict = "noise" if diff["within_noise"] else "lower" if diff["high"] < 0 else "higher"
    return f"{diff['difference']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] {verdict}"


def _validation(rows: list[dict[str, Any]], metric: str) -> float:
    """Mean validation score where the rows have one (the frozen row has none: its test)."""
    values = [r["validation"][metric] for r in rows if metric in r.get("validation", {})]
    return sum(values) / len(values) if values else _stats(rows, metric)[0]


def depth_curves(task: dict[str, Any]) -> list[str]:
    """Progressive's depth search per seed: validation score at each depth, and the served one."""
    lines = []
    for i, row in enumerate(task["rows"].get("progressive", [])):
        curve = row.get("depth_curve") or []
        if not curve:
            continue
        points = ", ".join(f"{p['depth']}: {p['score']:.3f}" for p in curve)
        served = curve[-1]["branch_layer"] + curve[-1]["depth"] - row["branch_layer"]
        lines.append(
            f"- Progressive, seed run {i + 1}: validation by depth {points}; served depth {served}."
        )
    return [*lines, ""] if lines else []


def cheapest_at_target(task: dict[str, Any]) -> str:
    """The cheapest strategy to serve within TARGET of full, chosen on validation means."""
    metric = _metric(task)
    full = _stats(task["rows"]["full"], metric)[0]
    full_val = _validation(task["rows"]["full"], metric)
    if full <= 0 or full_val <= 0:
        return "full fine-tuning scored 0"
    reaching = [
        (rows[0].get("serving_ratio") or 0.0, strat, _stats(rows, metric)[0] / full)
        for strat, rows in task["rows"].items()
        if strat != "full" and _validation(rows, metric) >= TARGET * full_val
    ]
    if not reaching:
        return f"no strategy short of full reaches {TARGET:.0%} of full fine-tuning's {metric}"
    cost, strat, share = min(reaching)
    return (
        f"**{strat}** is the cheapest to serve that reaches {TARGET:.0%} of full on validation "
        f"({100 * share:.1f}% of full {metric} on test), at {100 * cost:.1f}% of the trunk's time "
        f"per batch"
    )


def narrative(results: dict[str, Any]) -> list[str]:
    tasks = results["tasks"]
    out = []
    sent = tasks.get("sentiment")
    if sent and "frozen" in sent["rows"]:
        z = sent["rows"]["frozen"][0]["test"]
        out.append(
            f"- **Scenario 1, freeze everything** (zero-shot from label descriptions): sentiment "
            f"accuracy {z['accuracy']:.3f}, macro-F1 {z['macro_f1']:.3f}"
            + (
                f"; topic macro-F1 {tasks['topic']['rows']['frozen'][0]['test']['macro_f1']:.3f}"
                if "topic" in tasks and "frozen" in tasks["topic"]["rows"]
                else ""
            )
            + ". No training cost at all, and the write-up's 'may not adapt' shows in the gap to "
            "every trained row below."
        )
    if sent and {"head-only", "full"} <= set(sent["rows"]):
        acc, f1 = (
            _stats(sent["rows"]["head-only"], "accuracy")[0],
            _stats(sent["rows"]["head-only"], "macro_f1")[0],
        )
        full = _stats(sent["rows"]["full"], "macro_f1")[0]
        out.append(
            f"- **Scenario 2, freeze the backbone** (head-only, a linear probe): sentiment "
            f"accuracy {acc:.3f} / macro-F1 {f1:.3f}, against full fine-tuning's macro-F1 "
            f"{full:.3f}."
        )
    for name, task in _ordered(tasks):
        rows = task["rows"]
        if "full" not in rows:
            continue
        metric = _metric(task)
        full = _stats(rows["full"], metric)[0]
        if full <= 0:
            continue
        vs_full = task.get("bootstrap", {}).get("vs_full", {})
        parts = [
            f"{s} {100 * _stats(rows[s], metric)[0] / full:.1f}%" + _noise(vs_full.get(s))
            for s in ("head-only", "top-1", "top-2", "top-3", "progressive")
            if s in rows
        ]
        out.append(
            f"- **{name}**, share of full fine-tuning's {metric} ({full:.3f}): "
            + ", ".join(parts)
            + f". {cheapest_at_target(task)}."
        )
    for name, task in _ordered(tasks):
        rows, metric = task["rows"], _metric(task)
        if not {"full", "top-1", "top-2"} <= set(rows) or _stats(rows["full"], metric)[0] <= 0:
            continue
        full = _stats(rows["full"], metric)[0]
        out.append(
            f"- **Top layers only, {name}**: Lee et al. find the top quarter of BERT's layers "
            f"reaches ~{ANCHOR_TOP_QUARTER:.0%} of full fine-tuning, CentraBert's per-task "
            f"top-layer branches {ANCHOR_BRANCHES:.1%}. With 6 layers here, top-1 (a sixth) "
            f"reaches {100 * _stats(rows['top-1'], metric)[0] / full:.1f}% and top-2 (a third) "
            f"{100 * _stats(rows['top-2'], metric)[0] / full:.1f}%."
        )
    s3 = results.get("scenario3")
    if s3:
        metric = "macro_f1"
        before = s3["a_before"][metric]
        shared, copies = s3["shared"], s3["copies"]
        b_metric = "entity_f1" if "entity_f1" in copies["b_test"] else "macro_f1"
        out.append(
            f"- **Scenario 3, freeze one head while another task trains**: task A ({s3['task_a']}, "
            f"head-only) scores macro-F1 {before:.3f}. Task B ({s3['task_b']}) then trains top-"
            f"{s3['k']}. With the top layers *shared and unfrozen*, A's frozen head drops to "
            f"{shared['a_after'][metric]:.3f} ({shared['a_after'][metric] - before:+.3f}"
            f"{_interval(shared.get('a_change'))}; "
            f"{_share(shared)} of its test predictions change and its logits move by up to "
            f"{shared['a_logits_max_abs_change']:.3g}): the write-up's 'risky' case, measured. "
            f"With *per-task copies* (this design) A scores {copies['a_after'][metric]:.3f} "
            f"(change {copies['a_after'][metric] - before:+.3f}; {_share(copies)} of predictions "
            f"change, logits change {copies['a_logits_max_abs_change']:.3g}, i.e. exactly "
            f"{'0' if copies['a_logits_max_abs_change'] == 0 else 'NOT 0'}), while B reaches "
            f"{b_metric} {copies['b_test'][b_metric]:.3f} (shared: "
            f"{shared['b_test'][b_metric]:.3f})."
        )
    return out


def _depth_patience(config: dict[str, Any]) -> str:
    patience = config.get("depth_patience")
    if patience is None:
        return ", down to full depth"
    depths = "one deeper depth" if patience == 1 else f"{patience} deeper depths"
    return f", stopping after {depths} without a new best"


def _precision(task: dict[str, Any]) -> str:
    """How the trained layers ran (runs made before mixed precision existed were fp32)."""
    if task.get("mixed_precision", "none") == "none":
        return ""
    return (
        f"; the trained layers' forward pass under {task['mixed_precision']} autocast (weights, "
        "gradients, evaluation and the exported heads fp32)"
    )


def _interval(diff: dict[str, Any] | None) -> str:
    return "" if diff is None else f", 95% CI [{diff['low']:+.3f}, {diff['high']:+.3f}]"


def _noise(diff: dict[str, Any] | None) -> str:
    if diff is None:
        return ""
    span = f"{diff['difference']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"
    return f" ({span}, {'within noise' if diff['within_noise'] else 'outside noise'})"


def _share(side: dict[str, Any]) -> str:
    share = side.get("a_predictions_changed")
    return "an unmeasured share" if share is None else f"{share:.1%}"


def _shared_taps(results: dict[str, Any]) -> str:
    """What reading frozen taps back instead of recomputing them saved (runs made before the
    taps were shared have no such figures)."""
    tasks = [t for t in results["tasks"].values() if "taps_reused" in t]
    if not tasks:
        return ""
    reused = sum(t["taps_reused"] for t in tasks)
    saved = sum(t["taps_seconds_saved"] for t in tasks)
    return (
        f" Each task's frozen taps were computed once: {reused} were read back instead of "
        f"recomputed, saving {saved / 60:.1f} min of trunk time."
    )


def markdown(results: dict[str, Any]) -> str:
    """REPORT.md's text; the same from the results in memory as from results.json read back."""
    lines = [
        "# Freezing strategies, measured",
        "",
        "Generated by `mts report` from `results.json`; do not edit by hand. A written reading "
        "of the committed run, scenario by scenario: [DISCUSSION.md](DISCUSSION.md).",
        "",
    ]
    m = results["machine"]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['threads']} "
        f"threads, Python {m['python']}. Seeds: {results['seeds']}. Whole run: "
        f"{results['total_seconds'] / 60:.1f} min.{_shared_taps(results)}",
        "",
    ]
    lines += ["## What the numbers show", "", *narrative(results), ""]
    for name, task in _ordered(results["tasks"]):
        c = task["config"]
        lines += [
            f"## {name}",
            "",
            f"Data: {task['data']}. Train/validation/test: {task['sizes']}; max length "
            f"{c['max_length']} tokens; up to {c['epochs']} epochs for top-k and full, and per "
            f"depth for progressive{_depth_patience(c)} (head-only 10)"
            f"{_precision(task)}. Trunk time for the cost "
            f"batch (16 texts): "
            f"{1000 * task['trunk_seconds']:.1f} ms.",
            "",
            *task_table(name, task),
            "",
            *depth_curves(task),
            f"![{name}]({name}.png)",
            "",
        ]
    lines += [
        "## How to read it",
        "",
        "- Quality is on the test split (mean ± std over seeds; frozen is deterministic). ",
        "- *CI*: the seed mean's bootstrap interval over test examples (the same resamples for "
        "every strategy of a task); *vs full* is the paired difference from full fine-tuning, "
        "*noise* where its interval holds 0: those two cannot be told apart on this test set.",
        "- *Serving cost vs trunk*: the exported head's ONNX time on the task's 16-text batch "
        "divided by the trunk's, measured interleaved in one process (medians).",
        "- *Peak RSS*: the training process's resident-memory high-water mark during the run.",
        "- *Full* trains every encoder layer; the embeddings stay the trunk's, since a head "
        "reads tap 0 at the earliest.",
        "",
    ]
    return "\n".join(lines)


def render(results: dict[str, Any], out: Path) -> Path:
    path = out / "REPORT.md"
    path.write_text(markdown(results))
    plot(results, out)
    return path


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, task in _ordered(results["tasks"]):
        metric = _metric(task)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for strat, rows in _ordered(task["rows"], STRATEGY_ORDER):
            m, s = _stats(rows, metric)
            cost = 100 * (rows[0].get("serving_ratio") or 0.0)
            ax1.errorbar(cost, m, yerr=s, fmt="o", capsize=3)
            ax1.annotate(strat, (cost, m), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax2.bar(strat, _mean(rows, "train_seconds"))
        ax1.set_xlabel("head serving cost, % of trunk time")
        ax1.set_ylabel(f"test {metric}")
        ax1.set_title(f"{name}: quality vs serving cost")
        ax2.set_ylabel("training wall time, s")
        ax2.set_title(f"{name}: training time")
        ax2.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
