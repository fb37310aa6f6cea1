"""Passages quoting bench/results files on the first run, training speed-ups, the data, hot-adds,
shadows and eviction."""

from __future__ import annotations

from collections.abc import Iterator

from tests.quotes import DISCUSSION, TRAINING, Quote


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
    yield Quote(
        "README.md",
        "the first answer (`embed`) came **{:.1f} s** after `make serve`'s server command started "
        "(the trunk's export took {:.1f} s of it), sentiment answered at {:.0f} s, topic at "
        "{:.0f} s and NER at **{:.0f} s**, with the test scores the all-at-once build gives "
        "(sentiment macro-F1 {:.3f}, topic {:.3f}, NER entity F1 {:.3f})",
        first,
        lambda d: (
            d["seconds_to_first_answer"],
            d["log"]["build_seconds"],
            *heads(d),
            *(
                d["heads"][t]["test"][m]
                for t, m in (("sentiment", "macro_f1"), ("topic", "macro_f1"))
            ),
            d["heads"]["ner"]["test"]["entity_f1"],
        ),
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
