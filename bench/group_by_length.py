"""Training time with and without length-grouped batches, interleaved over rounds.

Each round trains the same head twice (sentiment top-2 on 8,000 tweets by default), once with
batches of similar lengths and once with random batches, in alternating order; it writes each
run's seconds and test score, the per-round time ratio and the medians to a JSON results file.

    python bench/group_by_length.py --rounds 2 --out bench/results/group-by-length.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from machine import machine

from multitask_serve.export.encoder import load_encoder
from multitask_serve.training.data import load_dataset
from multitask_serve.training.loop import main_score
from multitask_serve.training.train import TrainConfig, cap_eval, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="sentiment")
    p.add_argument("--strategy", default="top-2")
    p.add_argument("--max-train", type=int, default=8000)
    p.add_argument("--max-eval", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/group-by-length.json"))
    args = p.parse_args()
    encoder = load_encoder()
    split = cap_eval(load_dataset(args.data, seed=0, max_train=args.max_train), args.max_eval)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        sides = (True, False) if r % 2 == 0 else (False, True)
        for grouped in sides:
            config = TrainConfig(
                task=args.data,
                data=args.data,
                strategy=args.strategy,
                max_length=args.max_length,
                max_train=args.max_train,
                max_eval=args.max_eval,
                epochs=args.epochs,
                patience=None,
                group_by_length=grouped,
            )
            result = train(config, encoder, split)
            runs.append(
                {
                    "round": r,
                    "grouped": grouped,
                    "train_seconds": round(result.train_seconds, 2),
                    "validation": main_score(result.validation),
                    "test": main_score(result.test),
                }
            )
            print(json.dumps(runs[-1]), flush=True)

    def seconds(grouped: bool) -> list[float]:
        return [x["train_seconds"] for x in runs if x["grouped"] is grouped]

    ratios = [a / b for a, b in zip(seconds(False), seconds(True), strict=True)]
    summary = {
        "grouped_seconds_median": statistics.median(seconds(True)),
        "random_seconds_median": statistics.median(seconds(False)),
        "speedup_per_round": [round(x, 3) for x in ratios],
        "speedup_median": round(statistics.median(ratios), 3),
    }
    print(json.dumps(summary))
    args.out.write_text(
        json.dumps(
            {
                "config": vars(args) | {"out": str(args.out)},
                "runs": runs,
                "summary": summary,
                "machine": machine(),
                "load_before": load_before,
                "load_after": os.getloadavg(),
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
