"""``mts report``: run every freezing strategy on every task and write reports/.

Needs the train extra, imported when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from multitask_serve.cli.common import ENCODER_HELP, needs_train_extra


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from multitask_serve.export.encoder import load_encoder
        from multitask_serve.training.report import (
            DEFAULT_TASKS,
            QUICK_TASKS,
            run_report,
            write_results,
        )
        from multitask_serve.training.report_md import render
    except ImportError as exc:
        needs_train_extra(exc)
    if args.render_only:
        import json

        results = json.loads((args.out / "results.json").read_text())
    else:
        profile = QUICK_TASKS if args.quick else DEFAULT_TASKS
        tasks = {name: profile[name] for name in args.tasks}
        sizes = {k: getattr(args, k) for k in ("max_train", "max_eval") if getattr(args, k)}
        changes: dict[str, Any] = {k: None if v == "none" else int(v) for k, v in sizes.items()}
        if args.mixed_precision:
            changes["mixed_precision"] = args.mixed_precision
        tasks = {name: dataclasses.replace(task, **changes) for name, task in tasks.items()}
        scenario = ("sentiment", "ner") if {"sentiment", "ner"} <= set(args.tasks) else None
        results = run_report(
            load_encoder(args.encoder), tasks, tuple(args.seeds), scenario=scenario
        )
        write_results(results, args.out)
    print(f"wrote {render(results, args.out)}")
    return 0


def add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = sub.add_parser("report", help="run every strategy on every task; write reports/")
    rep.add_argument("--out", type=Path, default=Path("reports"))
    rep.add_argument("--encoder", help=ENCODER_HELP)
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rep.add_argument(
        "--max-train",
        help="training examples per task, or 'none' for the full split "
        "(default: 8000 tweets for sentiment, the full split for topic and NER)",
    )
    rep.add_argument(
        "--mixed-precision",
        choices=["none", "bf16", "auto"],
        help="the trained layers' forward pass (default: auto, bf16 autocast where the CPU has "
        "bf16 units; see mts train --mixed-precision)",
    )
    rep.add_argument("--max-eval", help="validation and test examples per task, or 'none'")
    rep.add_argument(
        "--tasks",
        nargs="+",
        default=["sentiment", "topic", "ner"],
        choices=["sentiment", "topic", "ner"],
    )
    rep.add_argument(
        "--quick",
        action="store_true",
        help="a small sample of each task (800 tweets, 300 articles, 800 sentences) for a first "
        "look; most differences between strategies then sit inside the test noise",
    )
    rep.add_argument(
        "--render-only",
        action="store_true",
        help="re-render REPORT.md and plots from an existing results.json",
    )
    rep.set_defaults(func=cmd_report)
