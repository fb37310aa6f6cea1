"""Passages quoting the default build's results: candidates, build rounds, seeds, its log."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from tests.quotes import TRAINING, Quote
from tests.quotes.report import metric

DEFAULTS = "bench/results/training-defaults.json"
ROUNDS = "bench/results/default-build-rounds.json"


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
