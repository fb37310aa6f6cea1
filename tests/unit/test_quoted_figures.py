"""Figures the docs quote from results files are still the files' figures.

Each ``Quote`` is a passage as a doc prints it, with format fields (``{:.3f}``) where figures go,
the results file the figures come from, and how to read them from it. The test fills the passage
from the file and looks for it in the doc (whitespace collapsed: line wrapping does not matter).
A rerun that moves a figure, or a doc edit that changes one, fails here until the other follows;
a passage reworded fails too, so that its entry is reworded with it. reports/REPORT.md is checked
whole by tests/unit/test_report_md.py, since it is generated from reports/results.json.
"""

from __future__ import annotations

import json
import re
import statistics
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = "reports/results.json"
DEFAULTS = "bench/results/training-defaults.json"
ROUNDS = "bench/results/default-build-rounds.json"
TARGETS = "bench/results/targets-cpu.json"
TRAINING, DISCUSSION = "docs/training.md", "reports/DISCUSSION.md"


@dataclass(frozen=True)
class Quote:
    doc: str
    text: str  # the passage, with a format field per figure
    source: str  # a results file: JSON, or text (a log) for any other suffix
    figures: Callable[[Any], tuple[Any, ...]]

    def expected(self, root: Path = ROOT) -> list[str]:
        """The passage as the file's figures print: rounded as Python rounds, and with a figure
        the file stores at a tie (6.975) rounded up, as a writer reading the file would."""
        figures = self.figures(load(root / self.source))
        up = [f * (1 + 1e-9) if isinstance(f, float) else f for f in figures]
        return [prose(self.text.format(*f)) for f in (figures, up)]


@cache
def load(path: Path) -> Any:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else text


def prose(text: str) -> str:
    """Whitespace runs as one space: a doc's line breaks do not split a passage."""
    return re.sub(r"\s+", " ", text).strip()


def check(quote: Quote, root: Path = ROOT) -> None:
    """Fail naming what the doc says where the passage's figures differ from the file's."""
    doc = prose((root / quote.doc).read_text())
    expected = quote.expected(root)
    if any(e in doc for e in expected):
        return
    pattern = "".join(
        re.escape(re.sub(r"\s+", " ", literal)) + ("(.+?)" if field is not None else "")
        for literal, field, _, _ in string.Formatter().parse(quote.text)
    )
    found = re.search(pattern.strip(), doc)
    said = f"the doc says {found.group(0)!r}" if found else "the passage is not in the doc"
    pytest.fail(f"{quote.doc}: {said}; {quote.source} gives {expected[0]!r}")


# reports/results.json


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


# bench/results


def run(d: dict, name: str) -> tuple[float, float, float]:
    """A candidate of bench/train_defaults.py: validation, test, train seconds."""
    x = d["runs"][name]
    m = metric("ner" if name.startswith("n-") else "sentiment")
    return x["validation"][m], x["test"][m], x["train_seconds"]


CANDIDATES = {  # docs/training.md's first table: name -> the cells before the figures
    "s-top2-2k": "top-2 | 2000 | 3 | 1e-4 / 2e-3 | 64",
    "s-top2-4k": "top-2 | 4000 | 3 | 2e-4 / 2e-3 | 64",
    "s-top2-8k": "top-2 | 8000 | 2 | 3e-4 / 2e-3 | 48",
    "n-top2": "top-2 | all (1916) | 6 | 2e-4 / 5e-3 | 64",
    "n-top3-hi": "top-3 | all | 6 | 5e-4 / 1e-2 | 64",
    "n-top4-4e": "top-4 | all | 4 | 3e-4 / 5e-3 | 64",
    "n-top4": "top-4 | all | 8 | 3e-4 / 5e-3 | 64",
    "s-top2-4k-all": "top-2 | 4000 | 3 | 2e-4 / 2e-3 | 64",
    "s-top2-8k-all": "top-2 | 8000 | 2 | 3e-4 / 2e-3 | 48",
}
CHOSEN = "s-top2-8k-all"  # its validation figure is in bold
RECIPE_CHANGES = {  # the fourth round: the change's row -> its run
    "no warm-up (`--warmup 0`)": "s8-warm0",
    "constant rate after warm-up (`--schedule constant`)": "s8-const",
    "the same rate for both owned layers (`--lr-decay 1.0`)": "s8-decay1",
    "no clipping (`--grad-clip none`)": "s8-noclip",
    "class weights (`--class-weights`)": "s8-cw",
    "layer rate 2e-4": "s8-lr2e4",
    "layer rate 5e-4": "s8-lr5e4",
    "head rate 5e-3": "s8-head5e3",
}
FIFTH_ROUND = {
    "12,000 tweets": "s5-12k",
    "16,000 tweets": "s5-16k",
    "16,000 tweets, 1 epoch": "s5-16k-1e",
    "12,000 tweets, layer rate 5e-4": "s5-12k-lr5e4",
    "16,000 tweets, layer rate 5e-4": "s5-16k-lr5e4",
    "layer rate 8e-4": "s5-lr8e4",
    "top-3": "s5-top3",
    "12,000 tweets, bf16 (`--mixed-precision bf16`)": "s5-12k-bf16",
    "16,000 tweets, bf16": "s5-16k-bf16",
}


def table(rows: dict[str, str], cells: str, figures: Callable[..., tuple]) -> Iterator[Quote]:
    """Rows of a docs/training.md table of training-defaults.json's runs: label -> run."""
    for label, name in rows.items():
        yield Quote(TRAINING, f"| {label} | {cells} |", DEFAULTS, lambda d, n=name: figures(d, n))


def against_base(d: dict, name: str) -> tuple[float, ...]:
    """A fourth-round run's scores and its validation gain over the base, in points."""
    return (*run(d, name)[:2], 100 * (run(d, name)[0] - run(d, CHOSEN)[0]))


def candidate_quotes() -> Iterator[Quote]:
    rows = {f"{name} | {cells}": name for name, cells in CANDIDATES.items()}
    chosen = f"{CHOSEN} | {CANDIDATES[CHOSEN]}"
    yield from table(
        {k: v for k, v in rows.items() if k != chosen}, "{:.3f} | {:.3f} | {:.0f}", run
    )
    yield from table({chosen: CHOSEN}, "**{:.3f}** | {:.3f} | {:.0f}", run)
    yield Quote(
        TRAINING,
        "| none (s-top2-8k-all) | {:.4f} | {:.4f} | |",
        DEFAULTS,
        lambda d: run(d, "s-top2-8k-all")[:2],
    )
    yield from table(RECIPE_CHANGES, "{:.4f} | {:.4f} | {:+.2f}", against_base)
    yield from table(FIFTH_ROUND, "{:.4f} | {:.4f} | {:.0f}", run)
    yield Quote(
        TRAINING,
        "| 12,000 tweets, top-3, bf16 | **{:.4f}** | {:.4f} |",
        DEFAULTS,
        lambda d: run(d, "s5-12k-top3-bf16")[:2],
    )
    yield Quote(
        TRAINING,
        "| NER n-top4-4e in bf16 (against fp32: {:.4f} / {:.4f} / {:.0f} s) | {:.4f} | {:.4f} | "
        "{:.0f} |",
        DEFAULTS,
        lambda d: (*run(d, "n-top4-4e"), *run(d, "n-top4-4e-bf16")),
    )


def build(d: dict, label: str) -> dict:
    return next(x for x in d["runs"] if x["label"] == label)


def built(d: dict, *labels: str) -> tuple[float, ...]:
    return tuple(build(d, label)["built_seconds"] for label in labels)


def parity(d: dict, label: str) -> tuple[str, ...]:
    """The trained heads' parity figures, as the build prints them."""
    return tuple(h.rpartition("parity ")[2] for h in build(d, label)["heads"].values())


def scores(d: dict, label: str, task: str) -> dict[str, str]:
    """A trained head's figures as the build printed them: {"test macro_f1": "0.782", ...}."""
    out, phase = {}, ""
    for m in re.finditer(r"\b(validation|test)\b|(\w+) (\d+\.\d+)", build(d, label)["heads"][task]):
        if m.group(1):
            phase = m.group(1)
        else:
            out[f"{phase} {m.group(2)}"] = m.group(3)
    return out


def log_figures(pattern: str) -> Callable[[str], tuple[str, ...]]:
    return lambda text: tuple(m.group(1) for m in re.finditer(pattern, text))


def build_quotes() -> Iterator[Quote]:
    def parts(d: dict) -> tuple[float, ...]:
        """The shipped build (top3a): its time, the trunk's, each trained head's."""
        b = build(d, "top3a")
        return (b["built_seconds"], b["trunk_seconds"], *b["head_seconds"].values())

    yield Quote(
        TRAINING,
        "the old build took {:.1f}, {:.1f}, {:.1f} and {:.1f} s, the top-2 one {:.1f}, {:.1f}, "
        "{:.1f} and {:.1f} s, this one **{:.1f} s** (trunk {:.1f} s; sentiment {:.0f} s, topic "
        "{:.0f} s, NER {:.0f} s).",
        ROUNDS,
        lambda d: (
            *built(d, "old1", "old2", "old3", "old4", "new2", "new3", "new4", "new5"),
            *parts(d),
        ),
    )
    yield Quote(
        TRAINING,
        "top-2 against the old build {:.2f}x, {:.2f}x and {:.2f}x, top-3 against the top-2 builds "
        "beside it {:.2f}x and {:.2f}x.",
        ROUNDS,
        lambda d: tuple(
            a / b
            for a, b in zip(
                built(d, "new2", "new3", "new4", "top3a", "top3a"),
                built(d, "old3", "old4", "old4", "new4", "new5"),
                strict=True,
            )
        ),
    )
    yield Quote(
        "README.md",
        "{:.1f} s on a 2-core Xeon with AMX, nothing else running (trunk {:.1f} s; sentiment "
        "{:.0f} s, topic {:.0f} s, NER {:.0f} s;",
        ROUNDS,
        parts,
    )
    yield Quote(
        "README.md",
        "the previous build (sentiment top-2 on 8,000 tweets, fp32) took {:.0f}-{:.0f} s",
        ROUNDS,
        lambda d: (
            min(built(d, "old1", "old2", "old3", "old4")),
            max(built(d, "old1", "old2", "old3", "old4")),
        ),
    )
    yield Quote(
        "README.md",
        "| trained heads parity (default build): sentiment top-3, topic head-only, NER top-4 | {}, "
        "{}, {} |",
        ROUNDS,
        lambda d: parity(d, "top3a"),
    )
    yield Quote(
        "README.md",
        "sentiment top-3 (12,000 tweets, bf16): acc {}, macro-F1 {} (all 3,724 test tweets); topic "
        "head-only: acc {}, macro-F1 {}; NER top-4: entity F1 {}.",
        ROUNDS,
        lambda d: (
            *(
                scores(d, "top3a", t)[f"test {k}"]
                for t in ("sentiment", "topic")
                for k in ("accuracy", "macro_f1")
            ),
            scores(d, "top3a", "ner")["test entity_f1"],
        ),
    )
    sentence = ("macro_f1", "accuracy")
    shipped = {  # docs/training.md's table of the shipped heads: test metrics after the first
        "sentiment": (
            "| sentiment top-3, 12,000 tweets, bf16 | macro-F1 {} | macro-F1 {} (accuracy {}) |",
            sentence,
        ),
        "topic": ("| topic head-only | macro-F1 {} | macro-F1 {} (accuracy {}) |", sentence),
        "ner": (
            "| NER top-4, bf16 | entity F1 {} | entity F1 {} (P {}, R {}) |",
            ("entity_f1", "entity_precision", "entity_recall"),
        ),
    }
    for task, (row, keys) in shipped.items():
        yield Quote(
            TRAINING,
            row,
            ROUNDS,
            lambda d, task=task, keys=keys: (
                scores(d, "top3a", task)[f"validation {keys[0]}"],
                *(scores(d, "top3a", task)[f"test {k}"] for k in keys),
            ),
        )
    log = "bench/results/default-build.log"
    yield Quote(
        "README.md",
        "| trunk parity, ONNX taps vs the library's own forward pass (all-MiniLM-L6-v2) | {} max "
        "abs diff (tolerance 1e-4) |",
        log,
        log_figures(r"\[1/4\] trunk: .* parity max abs diff (\S+)"),
    )
    yield Quote(
        "README.md",
        "| embedding head parity | {} |",
        log,
        log_figures(r"\[\d/4\] head embed: .* parity max abs diff (\S+)"),
    )
    yield Quote(
        "README.md",
        "| zero-shot heads parity | {}, {} |",
        log,
        log_figures(r"\[\d/4\] head \S+-zs: .* parity max abs diff (\S+)"),
    )


def seeds(d: dict, task: str) -> tuple[float, ...]:
    t = d["tasks"][task]
    return (*(x["test"][t["metric"]] for x in t["runs"]), t["test_mean"], t["seeds_meeting_target"])


def seed_quotes() -> Iterator[Quote]:
    bf16, fp32 = "bench/results/build-seeds.json", "bench/results/build-seeds-fp32.json"
    heads = {
        "sentiment": "sentiment top-3, 12,000 tweets",
        "topic": "topic head-only (fp32 in both)",
        "ner": "NER top-4",
    }
    target = {"sentiment": ">= 0.78", "topic": ">= 0.94", "ner": ">= 0.52"}
    for source, precision in ((bf16, ", bf16"), (fp32, ", fp32")):
        for task in ("sentiment", "topic", "ner"):
            if task == "topic" and source == bf16:
                continue  # topic trains in fp32 either way: its row is the fp32 file's
            label = heads[task] + ("" if task == "topic" else precision)
            yield Quote(
                TRAINING,
                f"| {label} | {{:.4f}} / {{:.4f}} / {{:.4f}} | {{:.4f}} | {target[task]} | "
                "{} of 3 |",
                source,
                lambda d, task=task: seeds(d, task),
            )

    def spread(d: dict, task: str) -> tuple[float, ...]:
        return tuple(d["tasks"][task][k] for k in ("test_mean", "test_min", "test_max"))

    yield Quote(
        "README.md",
        "sentiment macro-F1 mean {:.3f} ({:.3f}-{:.3f}), NER entity F1 mean {:.3f} ({:.3f}-{:.3f})",
        bf16,
        lambda d: (*spread(d, "sentiment"), *spread(d, "ner")),
    )
    yield Quote(
        "README.md",
        "(bench/results/build-seeds-fp32.json; topic {:.3f}, {:.3f}-{:.3f})",
        fp32,
        lambda d: spread(d, "topic"),
    )


def bench_quotes() -> Iterator[Quote]:
    first = "bench/results/first-answer.json"

    def heads(d: dict) -> tuple[float, ...]:
        return tuple(d["heads"][t]["seconds_to_answer"] for t in ("sentiment", "topic", "ner"))

    yield Quote(
        "README.md",
        "first answer {:.1f} s; sentiment {:.0f} s, topic {:.0f} s, NER {:.0f} s",
        first,
        lambda d: (d["seconds_to_first_answer"], *heads(d)),
    )
    yield Quote(
        TRAINING,
        "the server answered `embed` {:.1f} s after it started (trunk export {:.1f} s), and served "
        "sentiment at {:.0f} s, topic at {:.0f} s and NER at **{:.0f} s**",
        first,
        lambda d: (d["seconds_to_first_answer"], d["log"]["build_seconds"], *heads(d)),
    )
    yield Quote(
        TRAINING,
        "Sentiment's training took {:.0f} s of it",
        first,
        lambda d: (d["heads"]["sentiment"]["train_seconds"],),
    )
    store = "bench/results/feature-store.json"
    yield Quote(
        TRAINING,
        "{:.0f} s against {:.0f} s in all ({:.2f}x); the second and third seeds took {:.0f} s and "
        "{:.0f} s against {:.0f} s and {:.0f} s, reading back in {:.1f} s in all the six taps that "
        "took {:.0f} s to compute; results identical.",
        store,
        lambda d: (
            d["total_wall_seconds"]["store"],
            d["total_wall_seconds"]["computed"],
            d["computed_over_store"],
            *(d["runs"]["store"][i]["wall_seconds"] for i in (1, 2)),
            *(d["runs"]["computed"][i]["wall_seconds"] for i in (1, 2)),
            d["store"]["loaded_seconds"],
            d["store"]["computed_seconds"],
        ),
    )
    grouping = "bench/results/group-by-length.json"

    def medians(d: dict, *sides: str) -> tuple[float, ...]:
        """bench/training_ab.py's median seconds per side."""
        return tuple(d["summary"][f"{side}_seconds_median"] for side in sides)

    def per_round(d: dict) -> tuple[float, ...]:
        by = {(x["round"], x["grouped"]): x["train_seconds"] for x in d["runs"]}
        return tuple(by[r, False] / by[r, True] for r in sorted({x["round"] for x in d["runs"]}))

    yield Quote(
        TRAINING,
        "{:.1f} s grouped against {:.1f} s (medians), {:.2f}x and {:.2f}x faster per round",
        grouping,
        lambda d: (*medians(d, "grouped", "random"), *per_round(d)),
    )
    mixed = "bench/results/mixed-precision.json"
    yield Quote(
        TRAINING,
        "whole runs {:.1f} s against {:.1f} s (medians, {:.2f}x;",
        mixed,
        lambda d: (*medians(d, "bf16", "fp32"), d["summary"]["speedup_median"]),
    )
    data = "bench/results/data-figures.json"

    def padded(d: dict, task: str, side: str) -> float:
        return d["padding"][task][side]["median"]

    yield Quote(
        TRAINING,
        "On {:,} tweets at {} tokens a random batch computes {:.2f}x the tokens it holds, a "
        "grouped one {:.2f}x (NER: {:.2f}x and {:.2f}x; topic's articles all fill {} tokens, "
        "{:.2f}x;",
        data,
        lambda d: (
            d["padding"]["sentiment"]["examples"],
            d["padding"]["sentiment"]["max_length"],
            padded(d, "sentiment", "random"),
            padded(d, "sentiment", "grouped"),
            padded(d, "ner", "random"),
            padded(d, "ner", "grouped"),
            d["padding"]["topic"]["max_length"],
            max(padded(d, "topic", side) for side in ("random", "grouped")),
        ),
    )

    def near(d: dict, key: str) -> dict:
        return d["near_duplicates"][key]

    yield Quote(
        TRAINING,
        "On the shipped sentiment data, {:,} of {:,} test tweets ({:.1%}) had a variant in train "
        "under the previous key (case and spaces only); {} do now",
        data,
        lambda d: (
            near(d, "earlier_key")["with_a_variant_in_train"],
            near(d, "earlier_key")["test"],
            near(d, "earlier_key")["with_a_variant_in_train"] / near(d, "earlier_key")["test"],
            near(d, "today_key")["with_a_variant_in_train"] or "none",
        ),
    )
    yield Quote(
        DISCUSSION,
        "Sentiment trains on {:,} of its {:,} training tweets",
        data,
        lambda d: (d["padding"]["sentiment"]["examples"], near(d, "today_key")["train"]),
    )
    hot_add = "bench/results/hot-add.json"
    yield Quote(
        "README.md",
        "| {:.2f}x and {:.2f}x in two runs of 3 rounds",
        hot_add,
        lambda d: tuple(
            d["runs"][f"defaults (inline runs on), {n} run"]["p99_ratio"]["median"]
            for n in ("second", "first")
        ),
    )
    shadow = "bench/results/shadow-cost.json"
    yield Quote(
        "README.md",
        "{:.2f}x / {:.2f}x throughput, {:.2f}x / {:.2f}x p99: inside the rounds' spread; {:.0%} / "
        "{:.0%} of texts skipped",
        shadow,
        lambda d: tuple(
            d["conditions"][f"{c} shadow"][k]
            for k in ("throughput_vs_none", "p99_vs_none", "shadow_skipped_share")
            for c in ("top-2", "head-only")
        ),
    )
    eviction = "bench/results/eviction.json"
    yield Quote(
        "README.md",
        "GreedyDual-Size hit ratio {:.3f} vs LRU {:.3f}; time waiting on loads {:.2f}x longer with "
        "LRU",
        eviction,
        lambda d: (
            d["policies"]["gds"]["hit_ratio"]["median"],
            d["policies"]["lru"]["hit_ratio"]["median"],
            d["load_wait_lru_over_gds"],
        ),
    )


def target(d: dict, name: str) -> tuple[float, float, float]:
    t = next(x for x in d["targets"] if x["target"] == name)
    return t["median"], t["min"], t["max"]


def measured(d: dict, name: str, key: str = "texts_per_s") -> float:
    return d["measured"][name][key]["median"]


def memory(d: dict, side: str) -> float:
    return d["memory_mib"][side]["end"][0]


def target_quotes() -> Iterator[Quote]:
    ratio = "{:.2f}x ({:.2f}-{:.2f})"
    rows = [
        (
            "| mixed single-task requests, ours / pipelines, fp32 | >= 3.0x | "
            + ratio
            + ": {:.0f} vs {:.0f} texts/s |",
            lambda d: (
                *target(d, "mixed, 1 text: ours / pipelines, fp32"),
                measured(d, "mixed, 1 text / ours"),
                measured(d, "mixed, 1 text / pipelines"),
            ),
        ),
        (
            "| the same, int8 trunk and heads | >= 4.0x | " + ratio + ": {:.0f} texts/s |",
            lambda d: (
                *target(d, "mixed, 1 text: ours / pipelines, int8 trunk and heads"),
                measured(d, "mixed, 1 text / ours int8"),
            ),
        ),
        (
            "| all tasks on every text, ours / pipelines, fp32 | >= 6.0x | "
            + ratio
            + ": {:.0f} vs {:.0f} texts/s |",
            lambda d: (
                *target(d, "all tasks, 1 text: ours / pipelines, fp32"),
                measured(d, "all tasks, 1 text / ours"),
                measured(d, "all tasks, 1 text / pipelines"),
            ),
        ),
        (
            "| the same, int8 trunk and heads | >= 6.0x | " + ratio + ": {:.0f} texts/s |",
            lambda d: (
                *target(d, "all tasks, 1 text: ours / pipelines, int8 trunk and heads"),
                measured(d, "all tasks, 1 text / ours int8"),
            ),
        ),
        (
            "| 8-text requests, all tasks, ours / pipelines, fp32 | >= 3.0x | "
            + ratio
            + ": {:.0f} vs {:.0f} texts/s |",
            lambda d: (
                *target(d, "all tasks, 8 texts: ours / pipelines, fp32"),
                measured(d, "all tasks, 8 texts / ours"),
                measured(d, "all tasks, 8 texts / pipelines"),
            ),
        ),
        (
            "| resident memory after the run, ours / pipelines, fp32 | <= 0.33 | {:.2f} ({:.0f} / "
            "{:.0f} MiB) |",
            lambda d: (
                target(d, "resident memory (end): ours / pipelines")[0],
                memory(d, "ours"),
                memory(d, "pipelines"),
            ),
        ),
        (
            "| the same, int8 trunk and heads | <= 0.25 | {:.2f} ({:.0f} / {:.0f} MiB) |",
            lambda d: (
                target(d, "resident memory (end): ours int8 / pipelines")[0],
                memory(d, "ours int8"),
                memory(d, "pipelines"),
            ),
        ),
        (
            "| single-text requests, server batch limit 1: HTTP / raw ORT at batch 1 | >= 0.85x | "
            + ratio
            + " |",
            lambda d: target(
                d, "1 text per request, batch limit 1: HTTP / raw ORT batch 1 (texts/s)"
            ),
        ),
        (
            "| concurrency 1: HTTP p50 minus raw ORT p50 | <= 1 ms | {:.2f} ms ({:.2f}-{:.2f}): "
            "{:.2f} vs {:.2f} ms |",
            lambda d: (
                *target(d, "concurrency 1: HTTP p50 - raw ORT p50 (ms)"),
                measured(d, "concurrency 1, 1 text / ours", "p50_ms"),
                measured(d, "raw 1 text / raw, CPU arena off", "p50_ms"),
            ),
        ),
        (
            "| 16-text requests: HTTP / raw ORT at batch 16 (was 0.9-1.0x) | no regression | "
            + ratio
            + " |",
            lambda d: target(
                d, "16 texts per request: HTTP / raw ORT batch 16 (texts/s), no regression from 0.9"
            ),
        ),
    ]
    for text, figures in rows:
        yield Quote("BENCHMARKS.md", text, TARGETS, figures)
    yield Quote(
        "README.md",
        "all tasks on every text {:.2f}x the throughput ({:.2f}x with the int8 trunk and heads), "
        "mixed single-task requests {:.2f}x ({:.2f}x), 8-text requests {:.2f}x, at {:.2f} of the "
        "memory ({:.2f} with int8); single-text p50 at concurrency 1: {:.2f} ms against raw ONNX "
        "Runtime's {:.2f} ms",
        TARGETS,
        lambda d: (
            *(
                target(d, name)[0]
                for name in (
                    "all tasks, 1 text: ours / pipelines, fp32",
                    "all tasks, 1 text: ours / pipelines, int8 trunk and heads",
                    "mixed, 1 text: ours / pipelines, fp32",
                    "mixed, 1 text: ours / pipelines, int8 trunk and heads",
                    "all tasks, 8 texts: ours / pipelines, fp32",
                    "resident memory (end): ours / pipelines",
                    "resident memory (end): ours int8 / pipelines",
                )
            ),
            measured(d, "concurrency 1, 1 text / ours", "p50_ms"),
            measured(d, "raw 1 text / raw, CPU arena off", "p50_ms"),
        ),
    )


QUOTES = [
    *report_quotes(),
    *candidate_quotes(),
    *build_quotes(),
    *seed_quotes(),
    *bench_quotes(),
    *target_quotes(),
]


def quote_id(quote: Quote) -> str:
    return f"{quote.doc}: {quote.text[:60]}"


@pytest.mark.parametrize("quote", QUOTES, ids=quote_id)
def test_each_quoted_figure_is_its_results_files_figure(quote: Quote) -> None:
    check(quote)


def test_a_figure_that_differs_from_its_file_fails_naming_what_the_doc_says(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"seconds": 214.68}))
    quote = Quote("doc.md", "took {:.0f} s against", "r.json", lambda d: (d["seconds"],))
    (tmp_path / "doc.md").write_text("Progressive\ntook 215 s\nagainst 58 s.")
    check(quote, tmp_path)
    (tmp_path / "doc.md").write_text("Progressive took 214 s against 58 s.")
    with pytest.raises(pytest.fail.Exception, match="the doc says 'took 214 s against'"):
        check(quote, tmp_path)
    (tmp_path / "doc.md").write_text("Progressive took longer.")
    with pytest.raises(pytest.fail.Exception, match="not in the doc"):
        check(quote, tmp_path)


def test_every_quote_names_a_figure_and_a_results_file() -> None:
    for quote in QUOTES:
        assert any(field is not None for _, field, _, _ in string.Formatter().parse(quote.text))
        assert quote.source.startswith(("reports/", "bench/results/")), quote
