"""Freezing strategies: one table, each a small function that only sets ``requires_grad``.

A head owns copies of the top ``owned`` layers and reads trunk tap ``L - owned``; the strategy
decides which of those copies (and always the classifier) train. ``progressive`` is a depth
search (``training.progressive``): it starts with the top layer and may go down to all ``L``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from multitask_serve.export.modules import Head


def train_top(head: Head, trainable: int) -> None:
    """The classifier and the top ``trainable`` owned layers train; everything else is frozen."""
    for param in head.parameters():
        param.requires_grad_(False)
    for param in head.classifier.parameters():
        param.requires_grad_(True)
    if trainable:
        for layer in head.layers[len(head.layers) - trainable :]:
            for param in layer.parameters():
                param.requires_grad_(True)


@dataclass(frozen=True)
class Strategy:
    name: str
    # How many top layers the head owns, given the encoder's depth L.
    owned: Callable[[int], int]
    # How many of them train at the start.
    initial: Callable[[int], int]
    progressive: bool = False
    trains: bool = True

    def apply(self, head: Head, num_layers: int) -> None:
        train_top(head, self.initial(num_layers))


def _top(k: int) -> Strategy:
    return Strategy(f"top-{k}", owned=lambda L: min(k, L), initial=lambda L: min(k, L))


STRATEGIES: dict[str, Strategy] = {
    # No training at all: the zero-shot head from label descriptions (scenario 1).
    "frozen": Strategy("frozen", owned=lambda L: 0, initial=lambda L: 0, trains=False),
    # The trunk frozen, a linear classifier on its last tap (scenario 2; a linear probe).
    "head-only": Strategy("head-only", owned=lambda L: 0, initial=lambda L: 0),
    "top-1": _top(1),
    "top-2": _top(2),
    "top-3": _top(3),
    "progressive": Strategy(
        "progressive",
        owned=lambda L: L,
        initial=lambda L: 1,
        progressive=True,
    ),
    # Every encoder layer (the embeddings stay the trunk's: the head reads tap 0).
    "full": Strategy("full", owned=lambda L: L, initial=lambda L: L),
}


def strategy(name: str) -> Strategy:
    """Look up a strategy; ``top-k`` works for any k."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    match = re.fullmatch(r"top-(\d+)", name)
    if match and int(match.group(1)) >= 1:
        return _top(int(match.group(1)))
    known = ", ".join([*STRATEGIES, "top-<k>"])
    raise ValueError(f"unknown strategy {name!r} (known: {known})")
