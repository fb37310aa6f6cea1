"""Passages quoting the other bench/results files: first answer, training speed-ups, the data
figures, serving benchmarks and BENCHMARKS.md's table of every CPU target."""

from __future__ import annotations

from collections.abc import Iterator

from tests.quotes import DISCUSSION, TRAINING, Quote

TARGETS = "bench/results/targets-cpu.json"


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
