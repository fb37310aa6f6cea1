"""Memory under the worst requests the limits allow, and what bounding it costs, side by side.

Two servers of the same repository (its three trained heads, as bench/pipelines_vs_ours.py):
"before" runs the code of ``--before`` (a git revision, checked out in a temporary worktree; its
defaults: ONNX Runtime's CPU arena on, no memory budget), "after" this tree's defaults with
``MTS_MEMORY_LIMIT_MB`` set as the manifests set it from a 2 GiB container limit.

- worst request: a fresh server, one ``POST /predict`` of ``MTS_MAX_BATCH_TEXTS`` (64) texts of
  the served length (256 tokens), all three tasks; its peak resident memory (VmHWM), what is
  resident a second after, and its time. Then 8 such requests at once on the same server.
- speed: both servers up, wrk's closed loop over real texts, interleaved over rounds (the order
  alternates): the pipelines comparison's loads (mixed single-task texts and all-task 8-text
  requests at 16 connections) and single texts at concurrency 1.

    .venv/bin/python -m bench.memory_bound [--repo model-repo] [--before HEAD~1] [--rounds 3]
        [--out bench/results/memory-bound.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import wrk
from bench.pipelines_vs_ours import make_loads, real_texts, three_heads
from support.machine import machine
from support.results import write_results
from support.servers import (
    Sampler,
    free_port,
    memory_mb,
    mts_serve,
    rss_mib,
    server,
    wait_idle,
)
from support.stats import summary

LIMIT_MB = 2048
WORST_TEXTS = 64
TASKS = ["sentiment", "topic", "ner"]


def worst_body() -> dict[str, Any]:
    """64 texts that each fill the served 256 tokens (cut there: they are longer)."""
    words = ["the", "market", "rallied", "as", "investors", "cheered", "strong", "results"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(300)) for i in range(WORST_TEXTS)]
    return {"inputs": texts, "tasks": TASKS}


@contextlib.contextmanager
def side(name: str, repo: Path, cwd: Path, env: dict[str, str], log: Path) -> Iterator[Any]:
    port = free_port()
    settings = {"MTS_SHUTDOWN_DRAIN_SECONDS": "0", **env}
    command = mts_serve(repo, port)
    with contextlib.chdir(cwd), server(name, command, port, settings, log=log) as s:
        yield s


def worst(url: str, pid: int, concurrent: int) -> dict[str, Any]:
    body = worst_body()
    before = rss_mib(pid)
    sampler = Sampler(pid, 0.02)
    sampler.start()
    started = time.perf_counter()

    def one() -> int:
        return httpx.post(f"{url}/predict", json=body, timeout=600).status_code

    threads: list[threading.Thread] = []
    statuses: list[int] = []
    for _ in range(concurrent):
        t = threading.Thread(target=lambda: statuses.append(one()))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    sampler.stop()
    m = memory_mb(pid)
    return {
        "requests": concurrent,
        "statuses": sorted(statuses),
        "rss_before_mib": round(before, 1),
        "peak_mib": round(m["VmHWM"], 1),
        "sampled_peak_mib": round(sampler.peak(), 1),
        "after_mib": round(m["VmRSS"], 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--before", default="HEAD~1", help="git revision of the 'before' side")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=Path("bench/results/memory-bound.json"))
    p.add_argument(
        "--worst-sides",
        type=lambda text: text.split(";"),
        default=["before", "after", "after, MTS_CPU_ARENA=true"],
        help="';'-separated sides that get the worst requests",
    )
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="mts-memory-") as tmp:
        work = Path(tmp)
        repo, _ = three_heads(args.repo, work, int8=False)
        old = work / "before"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(old), args.before], check=True
        )
        try:
            sides = {
                "before": (old, {}),
                "after": (here, {"MTS_MEMORY_LIMIT_MB": str(LIMIT_MB)}),
            }
            # The worst requests also on this tree with the arena back on (not a speed side).
            arena_on = {"MTS_MEMORY_LIMIT_MB": str(LIMIT_MB), "MTS_CPU_ARENA": "true"}
            worst_sides = {**sides, "after, MTS_CPU_ARENA=true": (here, arena_on)}
            worst_sides = {k: v for k, v in worst_sides.items() if k in args.worst_sides}
            results: dict[str, Any] = {
                "machine": machine(),
                "before": subprocess.run(
                    ["git", "rev-parse", "--short", args.before],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip(),
                "limit_mb": LIMIT_MB,
                "worst": {},
                "speed": {},
            }
            for r in range(args.rounds):
                for name in worst_sides if r % 2 == 0 else reversed(worst_sides):
                    cwd, env = worst_sides[name]
                    with side(name, repo, cwd, env, work / f"{name}.log") as s:
                        one = worst(s.url, s.pid, 1)
                        many = worst(s.url, s.pid, 8)
                    print(f"round {r + 1} {name}: one {one} eight {many}", file=sys.stderr)
                    got = results["worst"].setdefault(name, {"one": [], "eight": []})
                    got["one"].append(one)
                    if many:
                        got["eight"].append(many)
            texts = real_texts(600)
            loads = make_loads(texts, 1)
            eights = make_loads(texts, 8)
            plan = {
                "mixed, 1 text, 16 connections": ([loads["mixed"](i) for i in range(60)], 16),
                "all tasks, 8 texts, 16 connections": (
                    [eights["all tasks"](i) for i in range(60)],
                    16,
                ),
                "sentiment, 1 text, concurrency 1": (
                    [("/predict/sentiment", {"inputs": t}, 1) for t in texts[:60]],
                    1,
                ),
            }
            if args.speed:
                with contextlib.ExitStack() as stack:
                    up = {
                        name: stack.enter_context(
                            side(name, repo, cwd, env, work / f"{name}-s.log")
                        )
                        for name, (cwd, env) in sides.items()
                    }
                    for s in up.values():  # warm both
                        for reqs, connections in plan.values():
                            wrk.run(s.url, reqs, 2, connections)
                        wait_idle(s.pid)
                    for r in range(args.rounds):
                        for load, (reqs, connections) in plan.items():
                            for name in sides if r % 2 == 0 else reversed(sides):
                                s = up[name]
                                got_run = wrk.run(s.url, reqs, args.seconds, connections)
                                wait_idle(s.pid)
                                figures = {
                                    "texts_per_s": got_run.texts / got_run.seconds,
                                    "p50_ms": got_run.latency_ms["p50"],
                                }
                                print(f"round {r + 1} {load} / {name}: {figures}", file=sys.stderr)
                                results["speed"].setdefault(load, {}).setdefault(name, []).append(
                                    figures
                                )
                    for name, s in up.items():
                        results["worst"][name]["after speed runs"] = memory_mb(s.pid)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], check=False)
            shutil.rmtree(old, ignore_errors=True)
    results["summary"] = summarise(results)
    write_results(args.out, results)
    print(json.dumps(results["summary"], indent=1))
    print(f"written to {args.out}")


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, got in results["worst"].items():
        for key in ("peak_mib", "after_mib", "seconds"):
            out[f"one worst request, {key}: {name}"] = summary([g[key] for g in got["one"]])
        for key in ("peak_mib", "after_mib", "seconds"):
            out[f"eight worst requests at once, {key}: {name}"] = summary(
                [g[key] for g in got["eight"]]
            )
        out[f"eight worst requests at once, answers: {name}"] = sorted(
            {s for g in got["eight"] for s in g["statuses"]}
        )
    if not {"before", "after"} <= set(results["worst"]):
        return out
    ratios = [
        a["seconds"] / b["seconds"]
        for a, b in zip(
            results["worst"]["after"]["eight"], results["worst"]["before"]["eight"], strict=True
        )
    ]
    out["eight worst requests at once: time after / before"] = summary(ratios)
    for load, by_side in results["speed"].items():
        ratios = [
            a["texts_per_s"] / b["texts_per_s"]
            for a, b in zip(by_side["after"], by_side["before"], strict=True)
        ]
        out[f"{load}: after / before, texts/s"] = summary(ratios)
        for name, runs in by_side.items():
            out[f"{load}: {name}, p50 ms"] = summary([f["p50_ms"] for f in runs])
    return out


if __name__ == "__main__":
    main()
