"""Progress of long loops (exports, training): a bar on a terminal, plain lines in a log.

A progress bar redraws itself with carriage returns; where stderr is not a terminal (a Kubernetes
Job's log, CI, ``make serve`` piped to a file) every redraw became log text. ``progress`` gives a
tqdm bar when stderr is a terminal and otherwise writes plain lines with the same figures: one
per step for a loop whose steps matter (epochs: ``per_step=True``), else one when the loop ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any, Generic, Protocol, TypeVar

from tqdm import tqdm

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Progress(Protocol[T_co]):
    def __iter__(self) -> Iterator[T_co]: ...

    def set_postfix(self, **figures: Any) -> None: ...


def interactive() -> bool:
    """Whether stderr is a terminal that redraws a bar in place."""
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, *, per_step: bool = False) -> Progress[T]:
    """``iterable``, reporting its progress under ``desc``; ``set_postfix`` adds figures (loss,
    scores) to the bar, or to the step's line."""
    if interactive():
        return tqdm(iterable, desc=desc, leave=per_step)
    return Lines(iterable, desc, per_step)


def library_bars() -> None:
    """Silence the bars of the libraries a build uses (transformers' weight loading) where stderr
    is not a terminal; their figures say nothing a log needs."""
    if not interactive():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


class Lines(Generic[T]):
    """tqdm's interface as plain lines on stderr: ``desc: 2/3 loss=0.41 (3.2 s)``."""

    def __init__(self, iterable: Iterable[T], desc: str, per_step: bool) -> None:
        self.iterable, self.desc, self.per_step = iterable, desc, per_step
        self.total = len(iterable) if isinstance(iterable, Sized) else None
        self.figures: dict[str, Any] = {}

    def set_postfix(self, **figures: Any) -> None:
        self.figures = figures

    def __iter__(self) -> Iterator[T]:
        started, done, pending = time.perf_counter(), 0, False
        try:
            for item in self.iterable:
                pending = True
                yield item
                pending, done = False, done + 1
                if self.per_step:
                    self._line(done, started)
        finally:
            # Closed while the caller held an item: its loop left with ``break`` after the step.
            done += pending
            if pending or not self.per_step:
                self._line(done, started)

    def _line(self, done: int, started: float) -> None:
        count = f"{done}/{self.total}" if self.total is not None else str(done)
        figures = "".join(f" {k}={v}" for k, v in self.figures.items())
        seconds = time.perf_counter() - started
        print(f"{self.desc}: {count}{figures} ({seconds:.1f} s)", file=sys.stderr, flush=True)
