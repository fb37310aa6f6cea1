"""Passages quoting bench/results/long-texts.json: BENCHMARKS.md's section on long texts."""

from __future__ import annotations

from collections.abc import Iterator

from tests.quotes import Quote

LONG = "bench/results/long-texts.json"
DOC = "BENCHMARKS.md"
OVERLAPS = ("0", "32", "64", "96", "127")
SPREAD = "{:.0f} ({:.0f}-{:.0f})"


def spread(side: dict, key: str) -> tuple[float, float, float]:
    return side[key]["median"], side[key]["min"], side[key]["max"]


ALONE_NOT_WINDOWED = ("alone_not_windowed", "windowed_not_alone")


def ner_test(d: dict, *keys: str) -> tuple:
    return tuple(d["ner"]["test"][k] for k in keys)


def cost_rows() -> Iterator[Quote]:
    """The cost table: per shape, the text read in windows and the same tokens as texts."""
    labels = {
        "1": ("1 window", "1 text"),
        "4": ("4 windows", "4 texts"),
        "16": ("16 windows", "15 texts"),
    }
    cells = f"{{}} | {{}} | {{:.2f}} ({{:.2f}}-{{:.2f}}) | {SPREAD} | {SPREAD} | {SPREAD} |"
    for shape, (windows, texts) in labels.items():

        def figures(d: dict, side: str, rows: str, shape: str = shape) -> tuple:
            s = d["cost"]["shapes"][shape]
            measured = (
                spread(s[side], k) for k in ("requests_per_s", "tokens_per_s", "p50_ms", "p99_ms")
            )
            return (s["tokens"], s[rows], *(x for m in measured for x in m))

        yield Quote(
            DOC,
            f"| one text, {windows} | {cells} {{:.2f}}x |",
            LONG,
            lambda d, f=figures, shape=shape: (
                *f(d, "windowed", "windows"),
                d["cost"]["shapes"][shape]["windowed_vs_pieces_tokens_per_s"],
            ),
        )
        yield Quote(
            DOC,
            f"| the same tokens, {texts} | {cells} |",
            LONG,
            lambda d, f=figures: f(d, "pieces", "piece_texts"),
        )


def long_text_quotes() -> Iterator[Quote]:

    def by_overlap(d: dict) -> dict:
        return d["ner"]["validation"]["windowed_by_overlap"]

    yield Quote(
        DOC,
        "| entity F1 |" + " {:.3f} |" * len(OVERLAPS),
        LONG,
        lambda d: tuple(by_overlap(d)[o]["f1"] for o in OVERLAPS),
    )
    yield Quote(
        DOC,
        "| windows per document (median) |" + " {} |" * len(OVERLAPS),
        LONG,
        lambda d: tuple(by_overlap(d)[o]["windows_per_document"] for o in OVERLAPS),
    )
    topic = {
        "whole, windows overlapping by 32 (mean probability)": ("windowed",),
        "whole, pooled by mean logit": ("windowed_other_rules", "logits"),
        "whole, pooled by max probability": ("windowed_other_rules", "max"),
        "cut at 256 tokens": ("cut_at_served_length",),
        "cut at 128 tokens (the heads' training length)": ("cut_at_128",),
    }
    for label, path in topic.items():

        def scores(d: dict, path: tuple[str, ...] = path) -> tuple[float, float]:
            side = d["topic"]["test"]
            for key in path:
                side = side[key]
            return side["accuracy"], side["macro_f1"]

        yield Quote(DOC, f"| {label} | {{:.3f}} | {{:.3f}} |", LONG, scores)
    yield Quote(
        DOC,
        "**Topic on the BBC test articles** ({}; {:.0%} are longer than {} tokens, median {} "
        "windows, at most {}):",
        LONG,
        lambda d: (
            d["topic"]["articles"]["test"],
            d["topic"]["test_longer_than_served_length"],
            d["topic"]["served_length"],
            d["topic"]["test_windows_per_article"]["median"],
            d["topic"]["test_windows_per_article"]["max"],
        ),
    )
    ner = {
        "whole, in windows": "windowed",
        "cut at 256 tokens": "cut",
        "each sentence alone": "sentences_alone",
    }
    keys = ("precision", "recall", "f1", "recall_in_first_window", "recall_past_first_window")
    for label, side in ner.items():
        yield Quote(
            DOC,
            f"| {label} |" + " {:.3f} |" * len(keys),
            LONG,
            lambda d, side=side: tuple(d["ner"]["test"][side][k] for k in keys),
        )
    yield Quote(
        DOC,
        "{} gold entities of which {} start past the first window",
        LONG,
        lambda d: ner_test(d, "gold_entities", "gold_entities_past_first_window"),
    )
    yield Quote(
        DOC,
        "({:.3f} past the first window: {} entities found alone and not in the document, {} the "
        "other way)",
        LONG,
        lambda d: (
            d["ner"]["test"]["sentences_alone"]["recall_past_first_window"],
            *ner_test(d, *(f"past_first_window_found_{w}" for w in ALONE_NOT_WINDOWED)),
        ),
    )
    yield from cost_rows()
