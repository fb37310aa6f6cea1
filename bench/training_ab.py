"""Two ways of training the same head, interleaved over rounds: the shared loop of the training
benchmarks (bench/group_by_length.py, bench/mixed_precision.py).

Each round trains the head once per side, the sides' order alternating between rounds; every
run's seconds and validation/test score, the per-round time ratio (second side's seconds over
the first's) and the medians go to a JSON results file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from multitask_serve.export.encoder import load_encoder
from multitask_serve.training.data import load_dataset
from multitask_serve.training.loop import main_score
from multitask_serve.training.train import TrainConfig, cap_eval, train
from support.machine import machine


def parser(doc: str | None, out: str) -> argparse.ArgumentParser:
    """The head both sides train (sentiment top-2 on 8,000 tweets by default) and the rounds."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--data", default="sentiment")
    p.add_argument("--strategy", default="top-2")
    p.add_argument("--max-train", type=int, default=8000)
    p.add_argument("--max-eval", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(out))
    return p


def compare(args: argparse.Namespace, sides: dict[str, dict[str, Any]]) -> None:
    """Train once per side per round; ``sides`` maps a side's name to its TrainConfig fields.
    The speed-up is the second side's seconds over the first's."""
    fast, slow = sides
    encoder = load_encoder()
    split = cap_eval(load_dataset(args.data, seed=0, max_train=args.max_train), args.max_eval)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = (fast, slow) if r % 2 == 0 else (slow, fast)
        for side in order:
            config = TrainConfig(
                task=args.data,
                data=args.data,
                strategy=args.strategy,
                max_length=args.max_length,
                max_train=args.max_train,
                max_eval=args.max_eval,
                epochs=args.epochs,
                patience=None,
                **sides[side],
            )
            result = train(config, encoder, split)
            runs.append(
                {
                    "round": r,
                    "side": side,
                    **sides[side],
                    "train_seconds": round(result.train_seconds, 2),
                    "validation": main_score(result.validation),
                    "test": main_score(result.test),
                }
            )
            print(json.dumps(runs[-1]), flush=True)

    def seconds(side: str) -> list[float]:
        return [x["train_seconds"] for x in runs if x["side"] == side]

    ratios = [a / b for a, b in zip(seconds(slow), seconds(fast), strict=True)]
    summary = {
        f"{fast}_seconds_median": statistics.median(seconds(fast)),
        f"{slow}_seconds_median": statistics.median(seconds(slow)),
        "speedup_per_round": [round(x, 3) for x in ratios],
        "speedup_median": round(statistics.median(ratios), 3),
    }
    print(json.dumps(summary))
    args.out.write_text(
        json.dumps(
            {
                "config": vars(args) | {"out": str(args.out)},
                "sides": sides,
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
