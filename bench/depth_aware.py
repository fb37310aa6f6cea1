"""The depth-aware trunk against the whole trunk, side by side: the same server but for
``MTS_TRUNK_SEGMENTS``, on the three trained heads of a repository, interleaved rounds.

Loads (wrk, bench/wrk.py): single-text requests for the three tasks in turn, 16 in flight (in
each micro-batch only the rows of deep heads run the last layers); the same requests one at a
time (concurrency 1); all three tasks on every text (the batch goes as deep as its deepest head).

    .venv/bin/python -m bench.depth_aware [--repo model-repo] [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import wrk
from bench.baseline_app import TASKS
from bench.pipelines_vs_ours import real_texts, three_heads
from support.machine import machine
from support.results import write_results
from support.servers import free_port, mts_serve, server
from support.stats import summary


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--out", type=Path, default=Path("bench/results/depth-aware.json"))
    args = p.parse_args()
    texts = real_texts(300)
    load_before = os.getloadavg()
    loads = {
        "mixed, 1 text, 16 in flight": (
            [(f"/predict/{TASKS[i % 3]}", {"inputs": texts[i]}, 1) for i in range(60)],
            16,
        ),
        "mixed, 1 text, concurrency 1": (
            [(f"/predict/{TASKS[i % 3]}", {"inputs": texts[i]}, 1) for i in range(60)],
            1,
        ),
        "all tasks, 1 text, 16 in flight": (
            [("/predict", {"inputs": texts[i], "tasks": list(TASKS)}, 1) for i in range(60)],
            16,
        ),
    }
    figures: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo, heads = three_heads(args.repo, Path(tmp), int8=False)
        sides = {}
        for name, segments in (("depth-aware", "true"), ("whole trunk", "false")):
            port = free_port()
            env = {"MTS_LOG_LEVEL": "warning", "MTS_TRUNK_SEGMENTS": segments}
            sides[name] = stack.enter_context(
                server(name, mts_serve(repo, port), port, env, log=Path(tmp) / name)
            )
        for side in sides.values():
            for requests, connections in loads.values():
                wrk.run(side.url, requests, 2, connections)
        for r in range(args.rounds):
            order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]
            for load, (requests, connections) in loads.items():
                for name, side in order:
                    result = wrk.run(side.url, requests, args.seconds, connections)
                    row = {"texts_per_s": result.texts_per_s, "p50_ms": result.latency_ms["p50"]}
                    figures.setdefault(load, {}).setdefault(name, []).append(row)
                    print(f"round {r + 1} {load} / {name}: {row}", file=sys.stderr)
    results = {
        "machine": machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "heads": {
                t: f"{h.training.get('strategy', '?')} (tap {h.branch_layer})"
                for t, h in heads.items()
            },
        },
        "loads": {},
    }
    print("| load | depth-aware / whole trunk, texts/s | p50 ms, depth-aware vs whole |")
    print("|---|---|---|")
    for load, by_side in figures.items():
        ours, whole = by_side["depth-aware"], by_side["whole trunk"]
        ratio = [a["texts_per_s"] / b["texts_per_s"] for a, b in zip(ours, whole, strict=True)]
        results["loads"][load] = {
            "throughput_ratio": summary(ratio),
            "depth-aware": {k: summary([f[k] for f in ours]) for k in ours[0]},
            "whole trunk": {k: summary([f[k] for f in whole]) for k in whole[0]},
        }
        p50 = (
            statistics.median(f["p50_ms"] for f in ours),
            statistics.median(f["p50_ms"] for f in whole),
        )
        print(
            f"| {load} | {statistics.median(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f}) | "
            f"{p50[0]:.1f} vs {p50[1]:.1f} |"
        )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
