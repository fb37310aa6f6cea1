"""The default build's trained heads over several seeds: how often each meets its target.

``mts build`` trains each head once, with seed 0. This trains the same configurations
(``training.build.DEFAULT_HEADS``) with each seed and records validation and test scores, so a
target met on seed 0 can be told apart from a target the recipe meets.

    .venv/bin/python -m bench.build_seeds [--seeds 0 1 2] [--tasks sentiment ner]
        [--out bench/results/build-seeds.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

from multitask_serve.export.encoder import load_encoder
from multitask_serve.training.build import DEFAULT_HEADS
from multitask_serve.training.train import train
from support.results import write_results

# The targets for the default build (test split).
TARGETS = {"sentiment": ("macro_f1", 0.78), "topic": ("macro_f1", 0.94), "ner": ("entity_f1", 0.52)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", nargs="+", choices=sorted(TARGETS), default=["sentiment", "ner"])
    p.add_argument("--out", type=Path, default=Path("bench/results/build-seeds.json"))
    args = p.parse_args()
    encoder = load_encoder()
    heads = {config.task: config for config in DEFAULT_HEADS if config.task in args.tasks}
    results: dict[str, Any] = {"seeds": args.seeds, "tasks": {}}
    for task, config in heads.items():
        metric, target = TARGETS[task]
        runs = []
        for seed in args.seeds:
            t = time.perf_counter()
            result = train(dataclasses.replace(config, seed=seed), encoder)
            run = {
                "seed": seed,
                "validation": result.validation,
                "test": result.test,
                "seconds": round(time.perf_counter() - t, 1),
                "mixed_precision": result.config.mixed_precision,
            }
            runs.append(run)
            print(
                f"{task} seed {seed}: validation {result.validation[metric]:.4f}, test "
                f"{result.test[metric]:.4f} ({run['seconds']} s)",
                flush=True,
            )
        tests = [run["test"][metric] for run in runs]
        results["tasks"][task] = {
            "config": dataclasses.asdict(config),
            "metric": metric,
            "target": target,
            "runs": runs,
            "test_mean": statistics.mean(tests),
            "test_min": min(tests),
            "test_max": max(tests),
            "seeds_meeting_target": sum(score >= target for score in tests),
        }
        print(
            f"{task}: test {metric} mean {statistics.mean(tests):.4f} "
            f"(min {min(tests):.4f}, max {max(tests):.4f}); target {target} met by "
            f"{results['tasks'][task]['seeds_meeting_target']} of {len(tests)} seeds"
        )
    write_results(args.out, results, sort_keys=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
