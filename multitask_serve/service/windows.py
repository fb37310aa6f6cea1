"""Overlapping windows over a text longer than the served length: where they start, and which
window speaks for each token.

A text of ``n`` content tokens (special tokens aside) is read in windows of at most ``capacity``
content tokens (the served length less the special tokens each window adds), each starting
``capacity - overlap`` tokens after the one before, as Hugging Face tokenizers' overflowing
encodings with ``stride=overlap`` lay them out; the last window ends at the text's end. A token
in two windows takes its answer from the one in which it has the most context on both sides
(the larger of the two distances to the window's ends, counted from the nearer end), the
earlier window on a tie. Pure arithmetic: the engine turns each window into one row of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Content tokens ``start`` to ``stop`` (exclusive) of a text."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def windows(n: int, capacity: int, overlap: int) -> list[Window]:
    """The windows over ``n`` content tokens; one (possibly empty) when they fit."""
    if capacity < 1:
        raise ValueError(f"a window must hold at least one token, not {capacity}")
    if not 0 <= overlap < capacity:
        raise ValueError(f"the overlap must be in [0, {capacity}), not {overlap}")
    if n <= capacity:
        return [Window(0, n)]
    step = capacity - overlap
    spans = []
    start = 0
    while True:
        stop = min(start + capacity, n)
        spans.append(Window(start, stop))
        if stop == n:
            return spans
        start += step


def count(n: int, capacity: int, overlap: int) -> int:
    """``len(windows(n, capacity, overlap))`` without making them."""
    if n <= capacity:
        return 1
    step = capacity - overlap
    return 1 + -(-(n - capacity) // step)


def owners(spans: list[Window]) -> list[tuple[int, int]]:
    """Per content token of the text the windows cover, (window index, position in it) of the
    window in which it has the most context on both sides."""
    n = spans[-1].stop
    best: list[tuple[int, int]] = []
    first = 0  # the first window that has not ended before the token (windows start in order)
    for token in range(n):
        while spans[first].stop <= token:
            first += 1
        chosen, context = -1, -1
        for i in range(first, len(spans)):
            span = spans[i]
            if span.start > token:
                break
            here = min(token - span.start, span.stop - 1 - token)
            if here > context:
                chosen, context = i, here
        best.append((chosen, token - spans[chosen].start))
    return best
