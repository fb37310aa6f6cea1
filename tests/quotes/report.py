"""Passages quoting reports/results.json (the freezing-strategy report) outside REPORT.md."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from typing import Any

from tests.quotes import DISCUSSION, TRAINING, Quote

REPORT = "reports/results.json"


def rows(r: dict, task: str, strategy: str) -> list[dict]:
    return r["tasks"][task]["rows"][strategy]


def metric(task: str) -> str:
    return "entity_f1" if task == "ner" else "macro_f1"


def score(r: dict, task: str, strategy: str) -> float:
    """The seed mean of the task's test metric."""
    return statistics.fmean(x["test"][metric(task)] for x in rows(r, task, strategy))


def share(r: dict, task: str, strategy: str) -> float:
    """Percent of full fine-tuning's seed mean."""
    return 100 * score(r, task, strategy) / score(r, task, "full")


def seconds(r: dict, task: str, strategy: str) -> float:
    return statistics.fmean(x["train_seconds"] for x in rows(r, task, strategy))


def vs_full(r: dict, task: str, strategy: str) -> dict:
    return r["tasks"][task]["bootstrap"]["vs_full"][strategy]


def interval(r: dict, task: str, strategy: str) -> tuple[float, float, float]:
    ci = r["tasks"][task]["bootstrap"]["intervals"][strategy]
    return ci["mean"], ci["low"], ci["high"]


def placed(r: dict, task: str, strategy: str) -> tuple[float, ...]:
    """A strategy's seed mean with its interval, and its share of full."""
    return (*interval(r, task, strategy), share(r, task, strategy))


def gap(r: dict, task: str, strategy: str) -> tuple[float, float, float]:
    d = vs_full(r, task, strategy)
    return d["difference"], d["low"], d["high"]


def points(r: dict, task: str, strategy: str) -> float:
    """Points below full (positive: lower)."""
    return -100 * vs_full(r, task, strategy)["difference"]


def served(r: dict, task: str) -> str:
    """Progressive's served depth per seed: its tap's distance below the deepest depth tried."""
    depths = []
    for row in rows(r, task, "progressive"):
        last = row["depth_curve"][-1]
        depths.append(last["branch_layer"] + last["depth"] - row["branch_layer"])
    return ", ".join(str(d) for d in depths)


def serving(r: dict, task: str, strategy: str) -> float:
    return 100 * rows(r, task, strategy)[0]["serving_ratio"]


def progressive_row(task: str, label: str, noise: str) -> Quote:
    return Quote(
        TRAINING,
        f"| {label} | {{}} | {{:+.3f}} [{{:+.3f}}, {{:+.3f}}]{noise} | {{:.0f}} s vs {{:.0f}} s |",
        REPORT,
        lambda r: (
            served(r, task),
            *gap(r, task, "progressive"),
            seconds(r, task, "progressive"),
            seconds(r, task, "full"),
        ),
    )


def layers_row(strategy: str) -> Quote:
    """A row of DISCUSSION.md's table: per task, share of full, gap to it, and whether noise."""

    def cells(r: dict) -> tuple[Any, ...]:
        out: list[Any] = []
        for task in ("sentiment", "topic", "ner"):
            d = vs_full(r, task, strategy)
            out += [
                share(r, task, strategy),
                d["difference"],
                "noise" if d["within_noise"] else "real",
            ]
        return tuple(out)

    cell = "{:.1f}% ({:+.3f}, {})"
    return Quote(DISCUSSION, f"| {strategy} | {cell} | {cell} | {cell} |", REPORT, cells)


def report_quotes() -> Iterator[Quote]:
    yield progressive_row("sentiment", "sentiment, 8,000 tweets", "")
    yield progressive_row("topic", "topic", ", within noise")
    yield progressive_row("ner", "NER", ", within noise")
    for strategy in ("head-only", "top-1", "top-2", "top-3", "progressive"):
        yield layers_row(strategy)
    yield Quote(
        DISCUSSION,
        "Progressive also costs the most to train: {:.1f}x top-3 on sentiment ({:.0f} s against "
        "{:.0f} s a run) and {:.1f}x full on NER ({:.0f} s against {:.0f} s)",
        REPORT,
        lambda r: (
            seconds(r, "sentiment", "progressive") / seconds(r, "sentiment", "top-3"),
            seconds(r, "sentiment", "progressive"),
            seconds(r, "sentiment", "top-3"),
            seconds(r, "ner", "progressive") / seconds(r, "ner", "full"),
            seconds(r, "ner", "progressive"),
            seconds(r, "ner", "full"),
        ),
    )
    yield Quote(
        DISCUSSION,
        "({:.1f}% of the trunk measured on progressive's seed-0 head, {:.1f}% on top-3's)",
        REPORT,
        lambda r: (serving(r, "sentiment", "progressive"), serving(r, "sentiment", "top-3")),
    )
    yield Quote(
        DISCUSSION,
        "**Serving cost** grows by about 16% of the trunk per owned layer (top-1 {:.1f}-{:.1f}%, "
        "top-2 {:.1f}-{:.1f}%, top-3 {:.1f}-{:.1f}%)",
        REPORT,
        lambda r: tuple(
            f(serving(r, t, s) for t in r["tasks"])
            for s in ("top-1", "top-2", "top-3")
            for f in (min, max)
        ),
    )
    yield Quote(
        DISCUSSION,
        "NER ({:,} training sentences) and topic ({:,} articles) have the least data here",
        REPORT,
        lambda r: (r["tasks"]["ner"]["sizes"][0], r["tasks"]["topic"]["sizes"][0]),
    )
    yield Quote(
        DISCUSSION,
        "Every strategy is scored on every validation and test example: {:,} / {:,} tweets, "
        "{} / {} articles, {} / {} sentences.",
        REPORT,
        lambda r: tuple(
            r["tasks"][t]["sizes"][i] for t in ("sentiment", "topic", "ner") for i in (1, 2)
        ),
    )

    def ner_depths(r: dict) -> tuple[float, ...]:
        return tuple(points(r, "ner", s) for s in ("top-3", "top-1", "head-only"))

    yield Quote(
        DISCUSSION,
        "Every fixed depth short of full loses {:.1f}-{:.1f} points from top-3 to top-1 (head-only "
        "{:.1f}), with intervals that exclude 0",
        REPORT,
        ner_depths,
    )
    yield Quote(
        "README.md",
        "on NER every fixed depth short of full loses {:.1f}-{:.1f} points (head-only {:.1f})",
        REPORT,
        ner_depths,
    )
    yield Quote(
        "README.md",
        "From the report: top-2 reaches {:.1f}% of full fine-tuning on sentiment (a gap of {:.1f} "
        "points, outside the noise) at {:.1f}% of the trunk's serving time, and a head-only topic "
        "head is within noise of full ({:.1f}%) at {:.1f}%",
        REPORT,
        lambda r: (
            share(r, "sentiment", "top-2"),
            points(r, "sentiment", "top-2"),
            serving(r, "sentiment", "top-2"),
            share(r, "topic", "head-only"),
            serving(r, "topic", "head-only"),
        ),
    )
    yield Quote(
        "README.md",
        "Progressive ends within a point of full on all three tasks ({:.1f}, {:.1f} and {:.1f} "
        "points under)",
        REPORT,
        lambda r: tuple(points(r, t, "progressive") for t in ("sentiment", "topic", "ner")),
    )
    yield Quote(
        "README.md",
        "a frozen sentiment head loses {:.1f} points (95% interval [{:.1f}, {:.1f}]) and {:.1%} of "
        "its predictions change",
        REPORT,
        lambda r: (
            *(
                -100 * r["scenario3"]["shared"]["a_change"][k]
                for k in ("difference", "high", "low")
            ),
            r["scenario3"]["shared"]["a_predictions_changed"],
        ),
    )
    yield Quote(
        DISCUSSION,
        "A's macro-F1 drops to {:.3f}, a change of {:.3f} with a paired 95% interval of "
        "[{:.3f}, {:.3f}]: a real loss, not noise. {:.1%} of A's test predictions change label, "
        "and its logits move by up to {:.2f}.",
        REPORT,
        lambda r: (
            r["scenario3"]["shared"]["a_after"]["macro_f1"],
            *(r["scenario3"]["shared"]["a_change"][k] for k in ("difference", "low", "high")),
            r["scenario3"]["shared"]["a_predictions_changed"],
            r["scenario3"]["shared"]["a_logits_max_abs_change"],
        ),
    )
    yield Quote(
        DISCUSSION,
        "The whole run took {:.1f} min; the {} taps read back instead of recomputed saved "
        "{:.1f} min.",
        REPORT,
        lambda r: (
            r["total_seconds"] / 60,
            sum(t["taps_reused"] for t in r["tasks"].values()),
            sum(t["taps_seconds_saved"] for t in r["tasks"].values()) / 60,
        ),
    )
    yield Quote(
        DISCUSSION,
        "the per-run training times summed to {:.1f} min against 127.1.",
        REPORT,
        lambda r: (
            sum(
                x["train_seconds"]
                for t in r["tasks"].values()
                for s in t["rows"].values()
                for x in s
            )
            / 60,
        ),
    )
    yield Quote(
        TRAINING,
        "**{:.1f} min** for the whole run on a 2-core Xeon with AMX, against the 90-minute target; "
        "the taps read back saved {:.1f} min of it.",
        REPORT,
        lambda r: (
            r["total_seconds"] / 60,
            sum(t["taps_seconds_saved"] for t in r["tasks"].values()) / 60,
        ),
    )
    head_only_sentiment = "sentiment", "head-only"
    scenarios: dict[str, Callable[[dict], tuple]] = {  # DISCUSSION.md: passage -> figures
        "On BBC topics they reach macro-F1 {:.3f} [{:.3f}, {:.3f}], {:.0f}% of full fine-tuning "
        "({:.3f})": lambda r: (*placed(r, "topic", "frozen"), score(r, "topic", "full")),
        "On tweet sentiment they reach {:.3f} [{:.3f}, {:.3f}], half of full ({:.3f})": lambda r: (
            *interval(r, "sentiment", "frozen"),
            score(r, "sentiment", "full"),
        ),
        "Topic: {:.3f} [{:.3f}, {:.3f}], {:.1f}% of full, and its gap to full ({:+.3f} [{:+.3f}, "
        "{:+.3f}]) is within noise.": lambda r: (
            *placed(r, "topic", "head-only"),
            *gap(r, "topic", "head-only"),
        ),
        "Sentiment: {:.3f} [{:.3f}, {:.3f}] macro-F1, accuracy {:.3f}, {:.1f}% of full; the gap "
        "({:+.3f} [{:+.3f}, {:+.3f}]) is real.": lambda r: (
            *interval(r, *head_only_sentiment),
            statistics.fmean(x["test"]["accuracy"] for x in rows(r, *head_only_sentiment)),
            share(r, *head_only_sentiment),
            *gap(r, *head_only_sentiment),
        ),
        "NER: {:.3f} [{:.3f}, {:.3f}] entity F1, {:.0f}% of full ({:.3f})": lambda r: (
            *placed(r, "ner", "head-only"),
            score(r, "ner", "full"),
        ),
        "top-1 → top-2 → top-3 → full go {:.3f} → {:.3f} → {:.3f} → {:.3f}": lambda r: tuple(
            score(r, "sentiment", s) for s in ("top-1", "top-2", "top-3", "full")
        ),
    }
    for text, figures in scenarios.items():
        yield Quote(DISCUSSION, text, REPORT, figures)

    def within(r: dict) -> tuple[float, ...]:
        top3 = [100 * vs_full(r, t, "top-3")["difference"] for t in ("sentiment", "topic")]
        tasks = ("sentiment", "topic", "ner")
        return (*top3, *(100 * vs_full(r, t, "progressive")["difference"] for t in tasks))

    yield Quote(
        DISCUSSION,
        "the shallowest fixed depth within a point of full is top-3 on sentiment ({:.2f}) and "
        "topic ({:.2f}) and full itself on NER; progressive is within a point on all three "
        "({:.2f}, {:.2f}, {:.2f})",
        REPORT,
        within,
    )
    yield Quote(
        TRAINING,
        "the shallowest fixed depth within a point of full is top-3 for sentiment ({:.2f}) and "
        "topic ({:.2f}) and full for NER, and progressive is within a point on all three "
        "({:.2f}, {:.2f}, {:.2f})",
        REPORT,
        within,
    )
    yield Quote(
        DISCUSSION,
        "served no deeper than those in any seed (sentiment {}; topic {}; NER {})",
        REPORT,
        lambda r: tuple(served(r, t) for t in ("sentiment", "topic", "ner")),
    )
