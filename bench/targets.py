"""Every CPU performance target of the service, measured side by side in one run.

All servers start at once and stay up; each round measures every side of every comparison one
after the other (the order rotates between rounds), so both sides of a ratio see the same
machine. A figure is the median over rounds of the per-round value, with its spread (min, max);
a ratio is the median of the per-round ratios. HTTP load comes from wrk (bench/wrk.py), a compiled
client, so that the load generator does not eat the server's cores.

Sides:
- pipelines: three Hugging Face pipelines in one FastAPI process (bench/baseline_app.py);
- ours: ``mts serve`` on the three trained heads of the default build (sentiment top-2, topic
  head-only, NER top-4), fp32;
- ours int8: the same heads' int8 copies (``mts quantize --head``) on the int8 trunk
  (``mts quantize``, ``MTS_TRUNK_PRECISION=int8``);
- ours, CPU arena on: the same with ``MTS_CPU_ARENA=true`` (the default before the memory budget);
- ours, no inline runs: the same with ``MTS_BATCH_INLINE_MAX_TOKENS=0`` (every batch handed to the
  inference thread, as before inline runs);
- ours, batch limit 1: the same with ``MTS_BATCH_MAX_TEXTS=1``, against raw ORT at batch 1;
- raw: tokenize, trunk (as deep as the head reads) and head in this process with the service's
  session wrappers, no HTTP, warmed, with ONNX Runtime's thread spinning on and off (the faster
  is "raw").

    .venv/bin/python -m bench.targets [--repo model-repo] [--rounds 3] [--seconds 8]
        [--out bench/results/targets-cpu.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import wrk
from bench.baseline_app import TASKS, baseline_serve, prepare_models
from bench.http_vs_ort import RawPipeline
from bench.pipelines_vs_ours import real_texts, three_heads
from multitask_serve.export.encoder import default_encoder_path
from multitask_serve.export.quantize import INT8, quantize_head_for
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.sessions import Runtime
from support.machine import machine
from support.results import write_results
from support.servers import free_port, memory_mb, mts_serve, server, wait_idle
from support.stats import summary

LATENCY_TASK = "sentiment"
# The raw side's candidate configurations; the fastest (median over rounds) is "raw".
RAW_RUNTIMES = {
    "service defaults": Runtime(),
    "spinning on": Runtime(spinning=True),
    "CPU arena on": Runtime(cpu_arena=True),
    "1 intra-op thread": Runtime(threads=1),
}


def raw_figures(pipeline: RawPipeline, texts: list[str], seconds: float) -> dict[str, float]:
    """Throughput (texts/s) and p50 latency (ms) of back-to-back calls of ``len(texts)`` texts."""
    for _ in range(20):
        pipeline(texts)
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        pipeline(texts)
        latencies.append(time.perf_counter() - t0)
    return {
        "texts_per_s": len(texts) * len(latencies) / sum(latencies),
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
    }


def int8_heads(repo: Path, copy: Path) -> Path:
    """A copy of ``repo`` whose trained heads are their int8 copies (as ``mts quantize --head``
    makes them), made current."""
    shutil.copytree(repo, copy)
    stored = ModelRepository(copy)
    for task in stored.tasks():
        head = stored.read_head(task)
        if head.spec.traits.trained:
            spec, model = quantize_head_for(stored, head.spec, head.model_path.read_bytes())
            stored.add_head(spec, model)
    return copy


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    p.add_argument("--connections", type=int, default=16, help="requests in flight (throughput)")
    p.add_argument("--texts", type=int, default=600)
    p.add_argument("--out", type=Path, default=Path("bench/results/targets-cpu.json"))
    p.add_argument("--summarise", type=Path, help="only summarise measurements kept by a run")
    args = p.parse_args()
    if args.summarise:
        write(summarise(json.loads(args.summarise.read_text())), args.out)
        return
    if not wrk.available():
        sys.exit("bench/targets.py needs wrk (Debian: apt-get install wrk)")
    texts = real_texts(args.texts)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        repo, heads = three_heads(args.repo, work)
        stored = ModelRepository(repo)
        repo8 = int8_heads(repo, work / "repo-int8")
        models = work / "models"
        prepare_models(models, {t: h.labels for t, h in heads.items()}, default_encoder_path())
        mts = partial(mts_serve, repo)
        commands: dict[str, tuple[Callable[[int], list[str]], dict[str, str]]] = {
            "pipelines": (partial(baseline_serve, models), {}),
            "ours": (mts, {}),
            "ours int8": (partial(mts_serve, repo8), {"MTS_TRUNK_PRECISION": INT8}),
            "ours, batch limit 1": (mts, {"MTS_BATCH_MAX_TEXTS": "1"}),
            "ours, CPU arena on": (mts, {"MTS_CPU_ARENA": "true"}),
            "ours, no inline runs": (mts, {"MTS_BATCH_INLINE_MAX_TOKENS": "0"}),
        }
        env = {"HF_HUB_OFFLINE": "1", "MTS_LOG_LEVEL": "warning"}
        sides = {}
        for name, (command, extra) in commands.items():
            port = free_port()
            print(f"starting {name}", file=sys.stderr)
            sides[name] = stack.enter_context(
                server(
                    name,
                    command(port),
                    port,
                    env | extra,
                    log=work / f"{name}.log",
                )
            )
        raws = {
            f"raw, {name}": RawPipeline(stored, LATENCY_TASK, runtime)
            for name, runtime in RAW_RUNTIMES.items()
        }

        def chunk(i: int, size: int) -> list[str]:
            start = (i * size) % len(texts)
            return (texts + texts)[start : start + size]

        def requests(load: str, size: int, n: int = 60) -> list[wrk.Request]:
            out: list[wrk.Request] = []
            for i in range(n):
                inputs: str | list[str] = chunk(i, size)[0] if size == 1 else chunk(i, size)
                if load == "all tasks":
                    out.append(("/predict", {"inputs": inputs, "tasks": list(TASKS)}, size))
                elif load == "mixed":
                    out.append((f"/predict/{TASKS[i % len(TASKS)]}", {"inputs": inputs}, size))
                else:  # one task
                    out.append((f"/predict/{load}", {"inputs": inputs}, size))
            return out

        # (measurement, side) -> one closure per round returning the figure dict.
        single = [chunk(0, 1)[0]]
        sixteen = chunk(1, 16)
        plan: list[tuple[str, str, Callable[[], dict[str, float]]]] = []

        warm_ups: list[Callable[[], object]] = []

        def http(key: str, side: str, load: str, size: int, connections: int) -> None:
            reqs = requests(load, size)

            def measure() -> dict[str, float]:
                r = wrk.run(sides[side].url, reqs, args.seconds, connections)
                # Requests still in flight when wrk stops (seconds of work for the pipelines'
                # 8-text requests) must not run into the next measurement.
                settled = wait_idle(sides[side].pid)
                return {
                    "texts_per_s": r.texts_per_s,
                    "p50_ms": r.latency_ms["p50"],
                    "settle_s": settled,
                }

            plan.append((key, side, measure))

            def warm_up() -> None:
                wrk.run(sides[side].url, reqs, 2, connections)
                wait_idle(sides[side].pid)

            warm_ups.append(warm_up)

        for side in ("pipelines", "ours", "ours int8"):
            http("mixed, 1 text", side, "mixed", 1, args.connections)
            http("all tasks, 1 text", side, "all tasks", 1, args.connections)
            http("all tasks, 8 texts", side, "all tasks", 8, args.connections)
        for side in ("ours", "ours, CPU arena on", "ours, no inline runs"):
            http("concurrency 1, 1 text", side, LATENCY_TASK, 1, 1)
        http("mixed, 1 text", "ours, no inline runs", "mixed", 1, args.connections)
        for side in ("ours, CPU arena on",):
            http("mixed, 1 text", side, "mixed", 1, args.connections)
            http("all tasks, 8 texts", side, "all tasks", 8, args.connections)
        http("1 text, batch 1", "ours, batch limit 1", LATENCY_TASK, 1, args.connections)
        http("16 texts", "ours", LATENCY_TASK, 16, 4)
        for name, raw in raws.items():
            plan.append(("raw 1 text", name, lambda r=raw: raw_figures(r, single, args.seconds)))
            plan.append(("raw 16 texts", name, lambda r=raw: raw_figures(r, sixteen, args.seconds)))

        print("warm-up", file=sys.stderr)
        for warm_up in warm_ups:
            warm_up()
        memory: dict[str, dict[str, list[float]]] = {}
        for side in ("pipelines", "ours", "ours int8", "ours, CPU arena on"):
            memory[side] = {"warm": [memory_mb(sides[side].pid)["VmRSS"]]}
        rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            order = plan[r % len(plan) :] + plan[: r % len(plan)]
            for key, side, measure in order:
                figures = measure()
                rounds.setdefault((key, side), []).append(figures)
                print(f"round {r + 1} {key} / {side}: {figures}", file=sys.stderr)
        for side in memory:
            m = memory_mb(sides[side].pid)
            memory[side]["end"] = [m["VmRSS"]]
            memory[side]["peak"] = [m["VmHWM"]]
    load_after = os.getloadavg()
    raw = {
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_after},
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
            "texts": len(texts),
            "heads": {
                t: f"{h.training.get('strategy', '?')} (tap {h.branch_layer})"
                for t, h in heads.items()
            },
        },
        "memory_mib": memory,
        "rounds": {f"{k} / {side}": v for (k, side), v in rounds.items()},
    }
    # Kept before anything is derived from it: --summarise reads it again.
    kept = Path(tempfile.gettempdir()) / "targets.rounds.json"
    write_results(kept, raw)
    print(f"measurements kept in {kept}", file=sys.stderr)
    write(summarise(raw), args.out)


def write(results: dict[str, Any], out: Path) -> None:
    write_results(out, results)
    print(render(results))


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Targets, medians and spreads from the per-round measurements ``main`` keeps."""
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {
        tuple(key.split(" / ", 1)): values  # type: ignore[misc]
        for key, values in raw["rounds"].items()
    }
    memory = raw["memory_mib"]

    def per_round(key: str, side: str, figure: str) -> list[float]:
        return [f[figure] for f in rounds[(key, side)]]

    def ratio(a: list[float], b: list[float]) -> list[float]:
        return [x / y if y else float("nan") for x, y in zip(a, b, strict=True)]

    def difference(a: list[float], b: list[float]) -> list[float]:
        return [x - y for x, y in zip(a, b, strict=True)]

    raw_best = {
        key: max(
            (f"raw, {name}" for name in RAW_RUNTIMES),
            key=lambda side, key=key: statistics.median(per_round(key, side, "texts_per_s")),
        )
        for key in ("raw 1 text", "raw 16 texts")
    }
    measured: dict[str, Any] = {
        f"{key} / {side}": {figure: summary([f[figure] for f in values]) for figure in values[0]}
        for (key, side), values in rounds.items()
    }
    targets = []

    def target(name: str, values: list[float], goal: float, at_most: bool = False) -> None:
        med = statistics.median(values)
        met = med <= goal if at_most else med >= goal
        targets.append(
            {"target": name, "goal": goal, "at_most": at_most, "met": met, **summary(values)}
        )

    for load, goal, goal8 in (("mixed, 1 text", 3.0, 4.0), ("all tasks, 1 text", 6.0, None)):
        base = per_round(load, "pipelines", "texts_per_s")
        target(
            f"{load}: ours / pipelines, fp32",
            ratio(per_round(load, "ours", "texts_per_s"), base),
            goal,
        )
        q = ratio(per_round(load, "ours int8", "texts_per_s"), base)
        target(f"{load}: ours / pipelines, int8 trunk and heads", q, goal8 or goal)
    base = per_round("all tasks, 8 texts", "pipelines", "texts_per_s")
    target(
        "all tasks, 8 texts: ours / pipelines, fp32",
        ratio(per_round("all tasks, 8 texts", "ours", "texts_per_s"), base),
        3.0,
    )
    for side, goal in (("ours", 1 / 3), ("ours int8", 0.25)):
        for moment in ("warm", "end"):
            target(
                f"resident memory ({moment}): {side} / pipelines",
                [memory[side][moment][0] / memory["pipelines"][moment][0]],
                goal,
                at_most=True,
            )
    raw1 = per_round("raw 1 text", raw_best["raw 1 text"], "texts_per_s")
    target(
        "1 text per request, batch limit 1: HTTP / raw ORT batch 1 (texts/s)",
        ratio(per_round("1 text, batch 1", "ours, batch limit 1", "texts_per_s"), raw1),
        0.85,
    )
    raw_p50 = per_round("raw 1 text", raw_best["raw 1 text"], "p50_ms")
    target(
        "concurrency 1: HTTP p50 - raw ORT p50 (ms)",
        difference(per_round("concurrency 1, 1 text", "ours", "p50_ms"), raw_p50),
        1.0,
        at_most=True,
    )
    raw16 = per_round("raw 16 texts", raw_best["raw 16 texts"], "texts_per_s")
    target(
        "16 texts per request: HTTP / raw ORT batch 16 (texts/s), no regression from 0.9",
        ratio(per_round("16 texts", "ours", "texts_per_s"), raw16),
        0.9,
    )
    variants: dict[str, Any] = {}
    for (key, side), _ in rounds.items():
        if side in ("ours", "pipelines", "ours int8") or side.startswith("raw"):
            continue
        if ("ours" in side) and (key, "ours") in rounds:
            variants[f"{key}: {side} / ours"] = {
                "texts_per_s": summary(
                    ratio(
                        per_round(key, side, "texts_per_s"), per_round(key, "ours", "texts_per_s")
                    )
                ),
                "p50_ms_minus_ours": summary(
                    difference(per_round(key, side, "p50_ms"), per_round(key, "ours", "p50_ms"))
                ),
            }
    for side in memory:
        if side not in ("ours", "pipelines"):
            variants[f"resident memory (end): {side} / ours"] = round(
                memory[side]["end"][0] / memory["ours"]["end"][0], 3
            )
    return {
        **{k: v for k, v in raw.items() if k != "rounds"},
        "raw_best": raw_best,
        "variants_vs_ours": variants,
        "targets": targets,
        "measured": measured,
    }


def render(results: dict[str, Any]) -> str:
    lines = ["| target | goal | median (min-max) | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        goal = f"{'<=' if t['at_most'] else '>='} {t['goal']:.2f}"
        lines.append(
            f"| {t['target']} | {goal} | {t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f}) | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
