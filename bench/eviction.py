"""Which loaded head to evict: GreedyDual-Size against plain LRU on a skewed trace.

The service's own policies (service/residency.py ``GreedyDualSize`` and ``LRU``) replay the same
request traces over a thousand stored heads of two sizes, as the skewed benchmark stores them
(bench/skewed_heads.py): ``--big`` heads with three copied layers (graph ~21 MB, a cold load of
``--big-load-s``) and the rest classifier-only heads (~20 KB, ``--small-load-s``), each head's
rank in the Zipf order drawn at random. The budget holds a fifth of the heads' bytes. Per policy
and seed: hit ratio, the seconds requests spent waiting on loads (misses x each head's load
time, what users feel) and the bytes loaded. A trace is a sequence of single-head requests. The
default sizes and load times are bench/head_costs.py's (bench/results/head-costs.json): a
sequence classifier with three copied layers and a classifier-only one, fp32, each load's p95
plus its probe inference.

    .venv/bin/python -m bench.eviction [--heads 1000] [--big 400] [--requests 200000]
        [--seeds 5] [--zipf 1.1] [--out bench/results/eviction.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from multitask_serve.service.residency import LRU, GreedyDualSize, head_bytes
from support.capacity import replay
from support.results import write_results
from support.stats import summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=1000)
    parser.add_argument("--big", type=int, default=400)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--budget-share", type=float, default=0.2)
    parser.add_argument("--big-bytes", type=int, default=21_300_000)
    parser.add_argument("--small-bytes", type=int, default=20_000)
    parser.add_argument("--big-load-s", type=float, default=0.09)
    parser.add_argument("--small-load-s", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path("bench/results/eviction.json"))
    args = parser.parse_args()

    results: dict[str, Any] = {"command": "python -m bench.eviction", "inputs": vars(args).copy()}
    results["inputs"]["out"] = str(args.out)
    runs: dict[str, list[dict[str, float]]] = {"gds": [], "lru": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        sizes = np.full(args.heads, head_bytes(args.small_bytes), dtype=np.int64)
        costs = np.full(args.heads, args.small_load_s)
        big = rng.choice(args.heads, args.big, replace=False)
        sizes[big] = head_bytes(args.big_bytes)
        costs[big] = args.big_load_s
        # Zipf ranks over heads in a random order: popularity says nothing of size.
        weights = 1.0 / np.arange(1, args.heads + 1) ** args.zipf
        order = rng.permutation(args.heads)
        trace = order[rng.choice(args.heads, args.requests, p=weights / weights.sum())]
        budget = int(args.budget_share * sizes.sum())
        for name, make in (("gds", GreedyDualSize), ("lru", LRU)):
            runs[name].append(replay(make(), trace, sizes, costs, budget))
        print(f"seed {seed}: " + ", ".join(f"{n} {r[-1]}" for n, r in runs.items()), flush=True)
    results["policies"] = {
        name: {key: summary([r[key] for r in rounds]) for key in rounds[0]}
        for name, rounds in runs.items()
    }
    gds, lru = (results["policies"][n] for n in ("gds", "lru"))
    results["load_wait_lru_over_gds"] = round(
        lru["load_wait_s"]["median"] / gds["load_wait_s"]["median"], 3
    )
    print(json.dumps(results["policies"], indent=1))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
