"""Passages quoting bench/results files on serving: many heads under a budget, the oracle, and
BENCHMARKS.md's table of every CPU target (with README's summary of it)."""

from __future__ import annotations

from collections.abc import Iterator

from tests.quotes import Quote

TARGETS = "bench/results/targets-cpu.json"


def phase(d: dict, name: str, key: str) -> float:
    """bench/skewed_heads.py: a phase's median over rounds."""
    return d["phases"][name][key]["median"]


def over_ready(d: dict, name: str, key: str) -> float:
    """Resident memory over the replica's memory at ready plus its head budget."""
    return phase(d, name, key) / (phase(d, name, "rss_at_ready_mib") + d["budget_mb"])


RSS = ("rss_median_mib", "rss_max_mib")


def throughput(d: dict) -> tuple[float, ...]:
    """Texts/s under the budget, with all heads loaded, and without compiled heads; the ratios."""
    ours, full = phase(d, "budget", "texts_per_s"), phase(d, "all-loaded", "texts_per_s")
    plain = phase(d, "budget-uncompiled", "texts_per_s")
    return ours, full, ours / full, plain, plain / full


def serving_quotes() -> Iterator[Quote]:
    """README's measured rows on many heads and on the oracle."""
    yield Quote(
        "README.md",
        "ready {:.1f} s ({:.0f} s with all loaded); RSS median {:,.0f} MiB against {:.0f} at "
        "ready + {:,} budget",
        "bench/results/skewed-heads.json",
        lambda d: (
            *(phase(d, p, "ready_s") for p in ("budget", "all-loaded")),
            *(phase(d, "budget", k) for k in ("rss_median_mib", "rss_at_ready_mib")),
            d["budget_mb"],
        ),
    )
    yield Quote(
        "README.md",
        "{} copies answer {} as their originals",
        "bench/results/skewed-heads.json",
        lambda d: (d["copies"]["copies_checked"], d["copies"]["differences"] or "exactly"),
    )
    yield Quote(
        "README.md",
        "{:.1f} texts/s vs {:.1f} with all loaded ({:.2f}x; {:.1f}, {:.2f}x, without them); hit "
        "ratio {:.3f}; cold load p50 {:.0f} ms, p95 {:.0f} ms; RSS median {:.2f}x, max {:.2f}x of "
        "ready + budget ({:.2f}x / {:.2f}x without them)",
        "bench/results/skewed-heads-compiled.json",
        lambda d: (
            *throughput(d),
            *(phase(d, "budget", k) for k in ("hit_ratio", "cold_load_p50_ms", "cold_load_p95_ms")),
            *(over_ready(d, p, k) for p in ("budget", "budget-uncompiled") for k in RSS),
        ),
    )
    yield Quote(
        "README.md",
        "| {:,} requests, {:,} answers ({:,} through `/v1/embeddings`), {} differences; largest "
        "score deviation {:.1e}",
        "bench/results/oracle-tei-openai.json",
        lambda d: (
            d["calls"],
            d["answers_checked"],
            sum(
                n
                for route, n in d["answers_checked_by_route"].items()
                if route.startswith("openai")
            ),
            d["differences"],
            max(d["max_score_deviation"].values()),
        ),
    )


def fleet_quotes() -> Iterator[Quote]:
    """BENCHMARKS.md's table of one process against the fleet: texts/s and ratios, per size."""
    spread = "{:.1f} ({:.1f}-{:.1f})"
    ratio = "{:.2f}x ({:.2f}-{:.2f})"
    for texts in (1, 16):

        def cells(d: dict, texts: int = texts) -> tuple[float, ...]:
            out = [d["phases"]["single"][f"texts_per_s_{texts}"]]
            for side in ("fleet-router", "fleet-no-router"):
                out += [d["phases"][side][f"texts_per_s_{texts}"], d[f"{side}_over_single_{texts}"]]
            return tuple(x[k] for x in out for k in ("median", "min", "max"))

        yield Quote(
            "BENCHMARKS.md",
            f"| {texts} | {spread} | {spread}: {ratio} | {spread}: {ratio} |",
            "bench/results/fleet-overhead.json",
            cells,
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
        "BENCHMARKS.md",
        "the pipelines served {:.0f} mixed and {:.1f} all-task texts/s here against 54 and 19",
        TARGETS,
        lambda d: tuple(measured(d, f"{n}, 1 text / pipelines") for n in ("mixed", "all tasks")),
    )
    yield Quote(
        "BENCHMARKS.md",
        "raw ONNX Runtime {:.0f} single texts/s against 174. Mixed single-task requests kept their "
        "ratio ({:.2f}x against 2.75x) and memory its size ({:.0f} MiB against 389; int8 {:.0f} "
        "against 312). All-task requests lost ground: {:.2f}x against 5.14x",
        TARGETS,
        lambda d: (
            measured(d, "raw 1 text / raw, CPU arena off"),
            target(d, "mixed, 1 text: ours / pipelines, fp32")[0],
            memory(d, "ours"),
            memory(d, "ours int8"),
            target(d, "all tasks, 1 text: ours / pipelines, fp32")[0],
        ),
    )
    yield Quote(
        "BENCHMARKS.md",
        "our all-task throughput rose only to {:.0f} texts/s from 93",
        TARGETS,
        lambda d: (measured(d, "all tasks, 1 text / ours"),),
    )
    yield Quote(
        "BENCHMARKS.md",
        "a request takes {:.1f} s (ours) or {:.1f} s (pipelines)",
        TARGETS,
        lambda d: tuple(
            measured(d, f"all tasks, 8 texts / {side}", "p50_ms") / 1000
            for side in ("ours", "pipelines")
        ),
    )
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
