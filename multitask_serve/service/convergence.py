"""Converging on the repository: which version each task's pointer names, which of those are
not held yet, and which changes to apply given what changed meanwhile. The served set
(``HeadRegistry.sync``) and the shadow candidates (``Shadows.sync``) converge alike."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from multitask_serve.modelrepo.repository import RepositoryError
from multitask_serve.service.errors import Conflict, InvalidInput
from multitask_serve.service.residency import ServedHead

log = logging.getLogger(__name__)

# Why a stored head is not served, or not loaded now.
LOAD_ERRORS = (RepositoryError, InvalidInput, Conflict, OSError)
Held = TypeVar("Held", bound=ServedHead)


def each_new(
    wanted: Mapping[str, int],
    held: Mapping[str, ServedHead],
    make: Callable[[str, int], Held],
    role: str,
) -> dict[str, Held]:
    """``make`` each wanted (task, version) that ``held`` does not hold; failures are logged."""
    made: dict[str, Held] = {}
    for task, version in wanted.items():
        if task in held and held[task].version == version:
            continue
        try:
            made[task] = make(task, version)
        except LOAD_ERRORS as exc:
            log.error("not %s %s version %d from the repository: %s", role, task, version, exc)
    return made


def pointed(tasks: Iterable[str], pointer: Callable[[str], int | None]) -> dict[str, int]:
    """Task -> the version its ``pointer`` names in the repository, for the tasks that have one
    (a task removed meanwhile has none)."""
    wanted = {}
    for task in tasks:
        with contextlib.suppress(RepositoryError):
            version = pointer(task)
            if version is not None:
                wanted[task] = version
    return wanted


def converge(
    now: Mapping[str, Held],
    seen: Mapping[str, Held],
    wanted: Mapping[str, int],
    loaded: Mapping[str, Held],
) -> dict[str, Held | None]:
    """The changes that bring ``now`` to ``wanted``: ``loaded`` heads swapped in, unwanted tasks
    dropped (None), for the tasks whose head is still the one ``seen`` before loading (a change
    made meanwhile wins)."""
    changes: dict[str, Held | None] = {
        t: head for t, head in loaded.items() if now.get(t) is seen.get(t)
    }
    changes.update({t: None for t in now if t not in wanted and now[t] is seen.get(t)})
    return changes
