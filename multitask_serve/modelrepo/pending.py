"""The default heads a repository still waits for: ``<root>/pending-heads.json``.

``mts build --train-later`` (what the first ``mts serve --build-if-missing`` runs) publishes the
trunk and the training-free heads at once and lists the heads it did not train here, each with
the training config that makes it. The server trains them in a child process and removes each
entry once its head is served. The file is the plan, not the repository's view of what exists:
a head that was added and then deleted on purpose has no entry left, so a restart does not train
it again; an entry whose task the repository already serves (a crash between adding the head and
removing its entry) is dropped, not trained twice. Only the serving side and the build write it,
each by one atomic rename; an empty plan is no file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multitask_serve.modelrepo.atomic import atomic_write
from multitask_serve.modelrepo.types import REFERENCE_PRECISION, SpecError, validate_task_name

PENDING_FILE = "pending-heads.json"
PENDING_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PendingHead:
    task: str
    # ``TrainConfig``'s fields by name (training/config.py); kept as plain JSON here so that the
    # serving side reads the plan without the train extra.
    config: dict[str, Any]
    precision: str = REFERENCE_PRECISION


@dataclass(frozen=True)
class Pending:
    heads: tuple[PendingHead, ...]
    # The encoder the trunk was exported from, as the build was given it (None: the default);
    # the heads must be trained from the same one.
    encoder: str | None = None
    schema_version: int = field(default=PENDING_SCHEMA_VERSION)

    @property
    def tasks(self) -> list[str]:
        return [h.task for h in self.heads]

    def without(self, tasks: set[str]) -> Pending:
        return Pending(tuple(h for h in self.heads if h.task not in tasks), self.encoder)

    def to_json(self) -> bytes:
        body = {
            "schema_version": self.schema_version,
            "encoder": self.encoder,
            "heads": [
                {"task": h.task, "precision": h.precision, "config": h.config} for h in self.heads
            ],
        }
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Pending:
        try:
            body = json.loads(data)
            if body.get("schema_version") != PENDING_SCHEMA_VERSION:
                raise SpecError(f"unknown schema_version {body.get('schema_version')!r}")
            heads = tuple(
                PendingHead(
                    validate_task_name(h["task"]),
                    dict(h["config"]),
                    str(h.get("precision", REFERENCE_PRECISION)),
                )
                for h in body["heads"]
            )
            encoder = body.get("encoder")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SpecError(f"{PENDING_FILE}: {exc}") from exc
        return cls(heads, None if encoder is None else str(encoder))


def pending_path(root: Path) -> Path:
    return Path(root) / PENDING_FILE


def read_pending(root: Path) -> Pending | None:
    """The plan at ``root``, or None when nothing is pending."""
    try:
        data = pending_path(root).read_bytes()
    except FileNotFoundError:
        return None
    pending = Pending.from_json(data)
    return pending if pending.heads else None


def write_pending(root: Path, pending: Pending) -> None:
    """Replace the plan in one rename; an empty one removes the file."""
    path = pending_path(root)
    if pending.heads:
        atomic_write(path, pending.to_json())
    else:
        path.unlink(missing_ok=True)


def drop_pending(root: Path, tasks: set[str]) -> Pending | None:
    """Remove ``tasks``' entries (their heads are served, or the repository has the task);
    returns what is left, None when nothing is."""
    pending = read_pending(root)
    if pending is None:
        return None
    left = pending.without(tasks)
    if left != pending:
        write_pending(root, left)
    return left if left.heads else None
