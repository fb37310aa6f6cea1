"""A replica's memory as one budget: what a run's activations may take, given the limit.

Resident memory = process and libraries + trunk + loaded heads + activations (+ ONNX Runtime's
arenas, when on). Everything but the activations is resident already when a batch starts, so the
room a batch's runs may use is what the limit leaves of the memory resident now; the engine cuts
each batch into runs that fit (``Engine``; answers are the same however rows are grouped), and a
text that does not fit even alone is refused with 413 instead of risking the replica.

The activation model, measured by bench/memory_model.py (bench/results/memory-model.json, MiniLM-L6
fp32 on the CPU, arena off, trunk and heads of every kind and depth): a run of ``rows`` texts
padded to ``length`` tokens peaks at about

    RUN_FIXED_BYTES + rows x length x (hidden x BYTES_PER_WIDTH + length x BYTES_PER_POSITION)

over the memory resident before it, as the deepest session in it (a trunk segment or a head's
own layers: every layer has the same shapes) holds its inputs, outputs and intermediates at once.
The constants are the measured runs' upper envelope; the width term scales with the trunk's
hidden size, the attention term (scores per head pair of positions) is that of 12 heads, as in
MiniLM and BERT-base.

ONNX Runtime's CPU arena keeps each session's largest run resident for good, so with it on the
memory a replica holds grows with the number of sessions (trunk segments, heads with layers of
their own) times the largest run: the budget holds with the arena off (the default), which gives
the memory back after each run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1 << 20
RUN_FIXED_BYTES = 24 * MIB
BYTES_PER_WIDTH = 136  # per token, per unit of the trunk's hidden size
BYTES_PER_POSITION = 100  # per token, per position it attends to
# The share of the limit a replica plans to use; the rest is headroom for what the model leaves
# out (the Python heap, request and answer bodies, the allocator's slack).
TARGET_SHARE = 0.8
# Runs are planned for half the room left: a shadow candidate (its own thread) or a head's probe
# may run beside a batch.
CONCURRENT_RUNS = 2
# A run planned above this many bytes is followed by handing freed heap pages back to the OS:
# rare, large runs would otherwise leave their activations resident in glibc's heap.
TRIM_AFTER_BYTES = 64 * MIB
# cgroup v1 reports "no limit" as a huge number (the page-rounded maximum of a signed 64-bit).
_UNLIMITED = 1 << 60


def cgroup_limit_mb(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The memory limit of this process's cgroup in MiB (v2 ``memory.max`` or v1
    ``memory.limit_in_bytes``); None when there is none or it cannot be read."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = (root / name).read_text().strip()
            if text == "max":
                return None
            limit = int(text)
            return None if limit >= _UNLIMITED else limit / MIB
    return None


def resident_bytes() -> int:
    """This process's resident memory now (``/proc/self/statm``); 0 where there is no /proc."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ActivationModel:
    """Peak bytes of one session run over the memory resident before it."""

    hidden_size: int

    def run_bytes(self, rows: int, length: int) -> int:
        per_token = self.hidden_size * BYTES_PER_WIDTH + length * BYTES_PER_POSITION
        return RUN_FIXED_BYTES + rows * length * per_token


class MemoryBudget:
    """How many rows of a given length one run may take, under ``limit_mb``.

    ``limit_mb`` None: no bound (every group runs whole, as without a budget). ``resident`` says
    what the process holds now; tests pass their own.
    """

    def __init__(
        self,
        limit_mb: float | None,
        model: ActivationModel,
        resident: Callable[[], int] | None = None,
    ) -> None:
        self.limit_mb = limit_mb
        self.model = model
        self._resident = resident or resident_bytes

    def room(self) -> int:
        """Bytes one run may take now: the planned share of the limit less what is resident,
        split between the runs that may happen at once."""
        if self.limit_mb is None:
            return 1 << 62
        planned = TARGET_SHARE * self.limit_mb * MIB
        return max(int((planned - self._resident()) / CONCURRENT_RUNS), 0)

    def rows_per_run(self, length: int, room: int) -> int:
        """The most rows of ``length`` tokens that fit in ``room`` bytes (0: not even one)."""
        per_row = self.model.run_bytes(1, length) - RUN_FIXED_BYTES
        return max((room - RUN_FIXED_BYTES) // per_row, 0)

    def refusal(self, length: int, room: int) -> str:
        """Why a text of ``length`` tokens is refused: the limit, and what it needs."""
        need = self.model.run_bytes(1, length) / MIB
        return (
            f"a text of {length} tokens needs about {need:.0f} MiB of working memory; the memory "
            f"limit (MTS_MEMORY_LIMIT_MB={self.limit_mb:g}) leaves {room / MIB:.0f} MiB beside "
            "what this replica holds: send shorter texts, or raise the limit"
        )


def describe(budget: MemoryBudget, arena: bool) -> None:
    """Log the budget at start-up, and warn when the arena undoes it."""
    if budget.limit_mb is None:
        log.info("no memory limit (MTS_MEMORY_LIMIT_MB unset and no cgroup limit): runs unbounded")
        return
    log.info(
        "memory limit %g MiB: runs planned within %.0f%% of it, %.0f MiB per run now",
        budget.limit_mb,
        100 * TARGET_SHARE,
        budget.room() / MIB,
    )
    if arena:
        log.warning(
            "MTS_CPU_ARENA=true keeps every session's largest run resident: the memory limit "
            "bounds each run, not what the arenas keep (MTS_CPU_ARENA=false holds the bound)"
        )
