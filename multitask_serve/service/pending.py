"""The default heads still training: a child process trains them while the service answers.

``mts serve --build-if-missing`` publishes the trunk and the training-free heads first, so the
service answers in seconds; the heads the repository lists as pending (modelrepo/pending.py) are
trained by ``mts train-pending`` in a child process, which keeps torch out of this one. This
module follows that child: it reads one JSON event per line from the child's stdout, keeps each
head's progress for ``GET /tasks``, logs each step, and hot-adds each finished archive through
the admin API's path (``HeadRegistry.add``: fingerprint, signature, a probe inference), then
removes the head's entry from the plan. A head that fails is reported (log and ``/tasks``) with
its reason; the others go on. Stopping the service stops the child; the child also ends by
itself when this process dies (its stdin is a pipe from here), so no training outlives it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from multitask_serve.modelrepo.pending import drop_pending, read_pending
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import SpecError
from multitask_serve.service.errors import ServiceError
from multitask_serve.service.registry import HeadRegistry, register_archive
from multitask_serve.service.residency import LoadedHead

log = logging.getLogger(__name__)

# Niceness of the training child: serving keeps the CPU it needs, training takes the rest.
TRAINING_NICENESS = 10
# Where the child writes archives: a staging name, so that a crash's leftovers are swept.
OUT_PREFIX = ".staging-train-"


@dataclass
class HeadTraining:
    """One pending head as ``GET /tasks`` lists it under ``training``."""

    task: str
    state: str = "waiting"  # waiting, training or failed
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    trainable_layers: int | None = None
    loss: float | None = None
    validation: float | None = None
    seconds: float | None = None
    error: str | None = None


class PendingTrainer:
    """Runs ``command`` (``mts train-pending``, given ``--out DIR --watch-stdin``) for the
    repository's pending heads and serves each head it trains."""

    def __init__(
        self,
        command: Sequence[str],
        repo: ModelRepository,
        registry: HeadRegistry,
        loads: Executor,
        max_bytes: int,
    ) -> None:
        self._command = list(command)
        self._repo, self._registry, self._loads = repo, registry, loads
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._heads: dict[str, HeadTraining] = {}
        self._started: dict[str, float] = {}
        self._child: subprocess.Popen[str] | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="pending-training", daemon=True)

    def start(self) -> None:
        """Train what the plan lists and the repository lacks; nothing when nothing is pending."""
        pending = read_pending(self._repo.root)
        if pending is None:
            return
        present = set(self._repo.tasks()) & set(pending.tasks)
        if present:  # added before a crash could remove their entries: not trained again
            log.info("already served, no longer pending: %s", ", ".join(sorted(present)))
            pending = drop_pending(self._repo.root, present)
            if pending is None:
                return
        self._heads = {task: HeadTraining(task) for task in pending.tasks}
        log.info(
            "training %s in a child process; the other heads are served meanwhile, and the "
            "task list shows the training's progress",
            ", ".join(pending.tasks),
        )
        self._thread.start()

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            heads = [asdict(h) for h in self._heads.values()]
            for head in heads:
                started = self._started.get(head["task"])
                if started is not None and head["state"] == "training":
                    head["seconds"] = round(now - started, 1)
        return heads

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``) and wait for the follower."""
        with self._lock:
            self._stopping = True
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            with self._lock:
                waiting = [t for t, h in self._heads.items() if h.state != "failed"]
            log.info("stopped training; still pending for the next start: %s", ", ".join(waiting))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the follower thread -------------------------------------------------------------------
    def _run(self) -> None:
        out = Path(tempfile.mkdtemp(prefix=OUT_PREFIX, dir=self._repo.root))
        status: int | None = None
        try:
            status = self._follow(out)
        except Exception:  # the follower must end cleanly whatever happened; say so
            log.exception("following the training process failed")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        self._finish(status)

    def _follow(self, out: Path) -> int | None:
        with self._lock:
            if self._stopping:
                return None
            self._child = child = subprocess.Popen(
                [*self._command, "--out", str(out), "--watch-stdin"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                # Not in the terminal's process group: Ctrl+C stops the server, which stops this.
                start_new_session=True,
            )
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, child.pid, TRAINING_NICENESS)
        assert child.stdout is not None
        for line in child.stdout:
            self._on_line(line.strip())
        return child.wait()

    def _on_line(self, line: str) -> None:
        try:
            event = json.loads(line)
            kind, task = event["event"], event["task"]
        except (ValueError, KeyError, TypeError):
            log.info("training: %s", line)  # not an event: shown as it came
            return
        if task not in self._heads:
            log.warning("training: event for %r, which is not pending: %s", task, line)
            return
        handler = {
            "training": self._on_training,
            "step": self._on_step,
            "epoch": self._on_epoch,
            "trained": self._on_trained,
            "failed": self._on_failed,
        }.get(kind)
        if handler is None:
            log.warning("training: unknown event %s", line)
            return
        try:
            handler(task, event)
        except Exception:  # one event gone wrong (a full disk) must not stop following the rest
            log.exception("training: handling %s failed", line)

    def _on_training(self, task: str, event: dict[str, Any]) -> None:
        with self._lock:
            self._heads[task].state = "training"
            self._started[task] = time.monotonic()
        log.info("training %s", task)

    def _on_step(self, task: str, event: dict[str, Any]) -> None:
        with self._lock:
            head = self._heads[task]
            head.epoch, head.epochs = event.get("epoch"), event.get("epochs")
            head.step, head.steps = event.get("step"), event.get("steps")

    def _on_epoch(self, task: str, event: dict[str, Any]) -> None:
        with self._lock:
            head = self._heads[task]
            head.epoch, head.epochs = event.get("epoch"), event.get("epochs")
            head.loss, head.validation = event.get("loss"), event.get("validation")
            head.trainable_layers = event.get("trainable_layers")
        log.info(
            "training %s: epoch %s/%s, loss %s, validation %s (%s trained layers)",
            task,
            event.get("epoch"),
            event.get("epochs"),
            event.get("loss"),
            event.get("validation"),
            event.get("trainable_layers"),
        )

    def _on_failed(self, task: str, event: dict[str, Any]) -> None:
        self._fail(task, str(event.get("error", "no reason given")))

    def _fail(self, task: str, error: str) -> None:
        with self._lock:
            head = self._heads[task]
            head.state, head.error = "failed", error
        log.error(
            "training %s failed: %s; the other heads are served or trained regardless, and a "
            "restart tries it again",
            task,
            error,
        )

    def _on_trained(self, task: str, event: dict[str, Any]) -> None:
        log.info(
            "trained %s (%s) in %s s: validation %s, test %s; checking it before serving",
            task,
            event.get("strategy"),
            event.get("train_seconds"),
            _scores(event.get("validation")),
            _scores(event.get("test")),
        )
        try:
            self._loads.submit(self._add, task, Path(event["archive"])).result()
        except (SpecError, ServiceError, OSError, KeyError, RuntimeError) as exc:
            self._fail(task, f"trained, but refused: {exc}")
            if task in self._repo.tasks():  # the task exists (added meanwhile): not pending
                drop_pending(self._repo.root, {task})
            return
        drop_pending(self._repo.root, {task})
        with self._lock:
            del self._heads[task]

    def _add(self, task: str, archive: Path) -> LoadedHead:
        """What ``POST /admin/heads/<task>`` does with an upload, from the child's archive."""
        try:
            with archive.open("rb") as file:
                return register_archive(file, task, self._max_bytes, self._registry.add)
        finally:
            archive.unlink(missing_ok=True)

    def _finish(self, status: int | None) -> None:
        with self._lock:
            stopping = self._stopping
            unfinished = [t for t, h in self._heads.items() if h.state != "failed"]
        if stopping:
            return
        for task in unfinished:
            self._fail(task, f"the training process exited with status {status} before it")
        with self._lock:
            failed = [t for t, h in self._heads.items() if h.state == "failed"]
        if failed:
            log.error(
                "training done; failed: %s (the lines above and the task list say why)",
                ", ".join(failed),
            )
        else:
            log.info("training done: every pending head is served")


def _scores(metrics: Any) -> str:
    if not isinstance(metrics, dict):
        return str(metrics)
    return ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
