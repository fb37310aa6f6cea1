"""Three seeds of one strategy, as ``mts report`` trains them, with and without a shared store of
frozen taps (``training.features.FeatureStore``), interleaved seed by seed.

Without the store every seed runs the frozen trunk over its train, validation and test splits;
with it, the first seed does and the others read the taps back from disk. Both sides must give
identical results (training is deterministic for a seed); the figure is the wall time per seed.

    python -m bench.feature_store [--strategy top-2] [--seeds 0 1 2]
        [--out bench/results/feature-store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from multitask_serve.export.encoder import load_encoder
from multitask_serve.training.features import FeatureStore
from multitask_serve.training.report import DEFAULT_TASKS, run_config, task_split
from multitask_serve.training.train import train
from support.machine import machine
from support.results import write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", default="sentiment", choices=sorted(DEFAULT_TASKS))
    p.add_argument("--strategy", default="top-2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("bench/results/feature-store.json"))
    args = p.parse_args()
    task = DEFAULT_TASKS[args.task]
    encoder = load_encoder()
    split = task_split(task)
    load_before = os.getloadavg()
    sides: dict[str, list[dict[str, Any]]] = {"computed": [], "store": []}
    with tempfile.TemporaryDirectory(prefix="mts-bench-taps-") as tmp:
        store = FeatureStore(Path(tmp))
        for seed in args.seeds:
            config = run_config(args.task, task, args.strategy, seed)
            for side in ("computed", "store") if seed % 2 == 0 else ("store", "computed"):
                started = time.perf_counter()
                result = train(config, encoder, split, store=store if side == "store" else None)
                wall = time.perf_counter() - started
                sides[side].append(
                    {
                        "seed": seed,
                        "wall_seconds": round(wall, 1),
                        "train_seconds_as_if_alone": round(result.train_seconds, 1),
                        "test": result.test,
                        "history": result.history,
                    }
                )
                print(side, seed, f"{wall:.1f} s", result.test, flush=True)
        reused = {"hits": store.hits, "computed_seconds": round(store.computed_seconds, 1)}
        reused["loaded_seconds"] = round(store.loaded_seconds, 1)
    same = all(
        a["test"] == b["test"] and a["history"] == b["history"]
        for a, b in zip(sides["computed"], sides["store"], strict=True)
    )
    totals = {side: sum(r["wall_seconds"] for r in runs) for side, runs in sides.items()}
    result = {
        "machine": machine() | {"load_average": {"before": load_before, "after": os.getloadavg()}},
        "settings": {"task": args.task, "strategy": args.strategy, "seeds": args.seeds},
        "runs": sides,
        "store": reused,
        "identical_results": same,
        "total_wall_seconds": totals,
        "computed_over_store": round(totals["computed"] / totals["store"], 3),
    }
    write_results(args.out, result)
    print(json.dumps({k: result[k] for k in ("store", "identical_results", "total_wall_seconds")}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
