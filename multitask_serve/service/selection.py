"""Which of the repository's tasks a replica set serves (``MTS_TASKS``): a static shard.

Every replica of a fleet reads the one shared repository; a selector narrows what one replica set
serves to tasks named outright or matched by shell-style globs (``fnmatch``: ``*``, ``?``,
``[...]``), so that shards of a fleet hold disjoint sets of heads (docs/scaling.md). A task the
selector leaves out is not listed, not loaded and not routable here, and the admin API refuses to
add it here: it would be stored where this replica set never serves it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from multitask_serve.modelrepo.types import TASK_NAME_RE

# A pattern: task-name characters and glob characters only (no '/', no spaces).
PATTERN_RE = re.compile(r"^[a-z0-9_\-*?\[\]!]{1,64}$")
GLOB_CHARS = frozenset("*?[")


class SelectorError(ValueError):
    """A task pattern that could never match a task name, or that is not a pattern."""


@dataclass(frozen=True)
class TaskSelector:
    """Task names and globs; empty selects every task."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> TaskSelector:
        checked = []
        for pattern in patterns:
            if not PATTERN_RE.match(pattern):
                raise SelectorError(
                    f"invalid task pattern {pattern!r}: a task name (a-z, 0-9, '-', '_') or a "
                    "glob of one ('*', '?', '[...]')"
                )
            if not is_glob(pattern) and not TASK_NAME_RE.fullmatch(pattern):
                raise SelectorError(f"{pattern!r} is not a valid task name")
            checked.append(pattern)
        return cls(tuple(checked))

    @property
    def everything(self) -> bool:
        return not self.patterns

    def __call__(self, task: str) -> bool:
        return self.everything or any(fnmatchcase(task, p) for p in self.patterns)

    def filter(self, tasks: Iterable[str]) -> list[str]:
        return [task for task in tasks if self(task)]

    def __str__(self) -> str:
        return ",".join(self.patterns) if self.patterns else "*"


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


EVERY_TASK = TaskSelector()
