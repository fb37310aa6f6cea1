"""What routing through Ray Serve costs per request: one ``mts serve`` process against ``mts
fleet`` with its router, and ``mts fleet --no-router`` (the client names the task in Ray's
``serve_multiplexed_model_id`` header), on the same repository and traffic, every head loaded.

One replica in each fleet, with both cores, so that only the routing differs. Requests cycle
over the repository's tasks, closed loop at ``--in-flight``, with 1 text and with ``--texts``
texts per request (what a request's fixed cost is spread over). Phases interleaved over
``--rounds``, each a fresh process; texts/s medians with their spread, and each fleet's ratio to
the single process per round.

    .venv/bin/python -m bench.fleet_overhead [--repo model-repo] [--rounds 3] [--seconds 15]
        [--out bench/results/fleet-overhead.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.fleet_skewed import fleet
from bench.http_vs_ort import TEXTS
from bench.loadgen import measure
from multitask_serve.modelrepo.repository import ModelRepository
from support.results import write_results
from support.stats import summary

PHASES = {"single": (0, ()), "fleet-router": (1, ()), "fleet-no-router": (1, ("--no-router",))}
HEADER = "serve_multiplexed_model_id"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fleet-overhead.json"))
    args = parser.parse_args()
    tasks = ModelRepository(args.repo).tasks()

    def traffic(texts: int, header: bool) -> Any:
        def request(i: int) -> tuple[str, dict[str, Any], int, dict[str, str]]:
            task = tasks[i % len(tasks)]
            inputs = [TEXTS[(i + j) % len(TEXTS)] for j in range(texts)]
            return f"/predict/{task}", {"inputs": inputs}, texts, {HEADER: task} if header else {}

        return request

    rounds: dict[str, list[dict[str, float]]] = {p: [] for p in PHASES}
    with tempfile.TemporaryDirectory(prefix="mts-fleet-overhead-") as tmp:
        for r in range(args.rounds):
            for name, (replicas, flags) in PHASES.items():
                log = Path(tmp) / f"{name}-{r}.log"
                figures = {}
                with fleet(args.repo.resolve(), replicas, {}, log, flags) as url:
                    for texts in (1, args.texts):
                        request = traffic(texts, header=name == "fleet-no-router")
                        measure(url, request, args.warmup, args.in_flight)
                        run = measure(url, request, args.seconds, args.in_flight)
                        figures[f"texts_per_s_{texts}"] = run.texts_per_s
                        figures[f"p50_ms_{texts}"] = run.percentile_ms(50)
                rounds[name].append(figures)
                print(f"round {r} {name}: {json.dumps(figures)}", flush=True)
    results: dict[str, Any] = {
        "command": "python -m bench.fleet_overhead "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "tasks": tasks,
        "rounds": rounds,
        "phases": {p: {k: summary([f[k] for f in fs]) for k in fs[0]} for p, fs in rounds.items()},
    }
    for name in ("fleet-router", "fleet-no-router"):
        for texts in (1, args.texts):
            key = f"texts_per_s_{texts}"
            ratios = [f[key] / s[key] for f, s in zip(rounds[name], rounds["single"], strict=True)]
            results[f"{name}_over_single_{texts}"] = summary(ratios)
    write_results(args.out, results)
    print(json.dumps({k: v for k, v in results.items() if "_over_" in k}, indent=1))


if __name__ == "__main__":
    main()
