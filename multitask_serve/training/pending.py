"""Training the heads a repository still waits for (``modelrepo.pending``), one archive each.

``mts serve --build-if-missing`` serves the trunk and the training-free heads first and runs
``mts train-pending`` in a child process for the rest: this trains each pending head in the
plan's order, writes its archive into a directory the server gave (one atomic rename, so the
server never reads half an archive) and tells the server what happens through ``emit``, one
event per call: ``training`` (a head starts), ``step`` (at most one a second), ``epoch`` (its
loss and validation score), ``trained`` (the archive is ready) or ``failed`` (why). The server
checks and serves each archive through the admin API's path (``HeadRegistry.add``).

A head that fails does not stop the others: each failure is reported with its reason and the
next head trains.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from multitask_serve.export.heads import HeadExporter
from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.atomic import atomic_write
from multitask_serve.modelrepo.pending import Pending, PendingHead
from multitask_serve.modelrepo.types import REFERENCE_PRECISION
from multitask_serve.training.config import TrainConfig
from multitask_serve.training.loop import Listener, main_score
from multitask_serve.training.train import export_run, train

Emit = Callable[[dict[str, Any]], None]

# Seconds between two step events of one head: a progress figure, not a stream of every batch.
STEP_EVENT_SECONDS = 1.0


def plan(
    heads: Iterable[TrainConfig], encoder: str | None, precision: str = REFERENCE_PRECISION
) -> Pending:
    """The pending-heads plan for ``heads``, trained later from ``encoder`` (None: the default)."""
    return Pending(
        tuple(PendingHead(c.task, dataclasses.asdict(c), precision) for c in heads), encoder
    )


def train_pending(pending: Pending, exporter: HeadExporter, out: Path, emit: Emit) -> list[str]:
    """Train every head of ``pending`` into ``out/<task>.tar.gz``; returns the tasks that failed."""
    failed = []
    for head in pending.heads:
        emit({"event": "training", "task": head.task})
        try:
            archive, summary = _train_one(head, exporter, out, _listener(head.task, emit))
        except Exception as exc:  # one head's failure, whatever it is, must not stop the others
            failed.append(head.task)
            emit({"event": "failed", "task": head.task, "error": f"{type(exc).__name__}: {exc}"})
            continue
        emit({"event": "trained", "task": head.task, "archive": str(archive), **summary})
    return failed


def config_of(head: PendingHead) -> TrainConfig:
    """The entry's training config; a field TrainConfig lacks is the plan's mistake (TypeError)."""
    config = TrainConfig(**head.config)
    if config.task != head.task:
        raise ValueError(f"the entry for {head.task!r} trains a head for {config.task!r}")
    return config


def _train_one(
    head: PendingHead, exporter: HeadExporter, out: Path, listener: Listener
) -> tuple[Path, dict[str, Any]]:
    config = config_of(head)
    result = train(config, exporter.encoder, listener=listener)
    spec, model = export_run(result, exporter, head.precision)
    archive = out / f"{head.task}.tar.gz"
    atomic_write(archive, pack_head(spec, model))
    summary = {
        "strategy": config.strategy,
        "train_seconds": round(result.train_seconds, 1),
        "validation": result.validation,
        "test": result.test,
        "branch_layer": spec.branch_layer,
        "precision": spec.precision,
    }
    return archive, summary


def _listener(task: str, emit: Emit) -> Listener:
    last = [0.0]

    def step(epoch: int, epochs: int, done: int, steps: int) -> None:
        now = time.monotonic()
        if now - last[0] < STEP_EVENT_SECONDS and done != steps:
            return
        last[0] = now
        emit(
            {
                "event": "step",
                "task": task,
                "epoch": epoch,
                "epochs": epochs,
                "step": done,
                "steps": steps,
            }
        )

    def epoch(epoch: int, epochs: int, record: dict[str, Any]) -> None:
        emit(
            {
                "event": "epoch",
                "task": task,
                "epoch": epoch,
                "epochs": epochs,
                "loss": record["loss"],
                "validation": round(main_score(record), 4),
                "trainable_layers": record["trainable_layers"],
            }
        )

    return Listener(step=step, epoch=epoch)
