"""``mts train-pending``: train the heads a repository lists as pending, one archive each.

``mts serve --build-if-missing`` runs it in a child process and serves each archive as it
appears (service/pending.py). Standard output carries only the events, one JSON object per line,
for the server to read; everything else (progress lines, library warnings) goes to stderr, which
the server passes through to its own log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from multitask_serve.cli.common import ENCODER_HELP, needs_train_extra


def _event_stream() -> IO[str]:
    """Standard output for events only: a copy of it is returned and file descriptor 1 is pointed
    at stderr, so that no stray print (ours, a library's, C code's) lands among the events."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return events


def _exit_when_stdin_closes() -> None:
    """End this process when standard input reaches its end: the server gives it a pipe that
    closes when the server dies in any way (kill -9 included), so training never outlives it."""

    def watch() -> None:
        # The descriptor, not sys.stdin: a daemon thread blocked inside a buffered reader holds
        # its lock, and the interpreter aborts when it finds it held at exit.
        while os.read(0, 1 << 12):
            pass
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def cmd_train_pending(args: argparse.Namespace) -> int:
    events = _event_stream()

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")

    if args.watch_stdin:
        _exit_when_stdin_closes()
    try:
        from multitask_serve.export.encoder import load_encoder
        from multitask_serve.export.heads import HeadExporter
        from multitask_serve.export.progress import library_bars
        from multitask_serve.modelrepo.pending import read_pending
        from multitask_serve.modelrepo.repository import ModelRepository
        from multitask_serve.training.pending import train_pending
    except ImportError as exc:
        needs_train_extra(exc)
    library_bars()
    pending = read_pending(args.repo)
    if pending is None:
        print(f"{args.repo}: no heads pending", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        encoder = load_encoder(args.encoder or pending.encoder)
        exporter = HeadExporter.for_repository(encoder, ModelRepository(args.repo))
    except Exception as exc:  # no head can train: each is reported failed with the reason
        for task in pending.tasks:
            emit({"event": "failed", "task": task, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    failed = train_pending(pending, exporter, args.out, emit)
    return 1 if failed else 0


def add_train_pending(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train-pending",
        help="train the heads --repo lists in pending-heads.json (`mts build --train-later`), one "
        "archive each into --out, one JSON event per line on stdout (what `mts serve "
        "--build-if-missing` runs in a child process while it serves)",
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--out", type=Path, required=True, help="directory for the heads' archives")
    p.add_argument("--encoder", help=ENCODER_HELP + "; default: the one pending-heads.json names")
    p.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when standard input closes (the server passes a pipe: its end ends training)",
    )
    p.set_defaults(func=cmd_train_pending)
