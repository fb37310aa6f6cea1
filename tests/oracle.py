"""The oracle's comparison: an answer against the same text's answer when it was sent alone."""

from __future__ import annotations

import math
from typing import Any

# Scores (probabilities, cosine scores, embedding components) may move this much with the batch a
# text shares (padding width changes the kernels' summation order); nothing else may move.
TOLERANCE = 1e-5


def compare(kind: str, got: Any, ref: Any) -> tuple[str | None, float]:
    """What differs between an answer and its alone-reference, and its largest score deviation.

    Labels, entities and character spans must be equal; scores within ``TOLERANCE``.
    """
    if kind == "embedding":
        if len(got) != len(ref):
            return f"embedding width {len(got)} != alone {len(ref)}", math.inf
        pairs = list(zip(got, ref, strict=True))
        labels: str | None = None
    elif kind == "token-classification":
        spans = [(e["entity"], e["start"], e["end"], e["text"]) for e in got]
        ref_spans = [(e["entity"], e["start"], e["end"], e["text"]) for e in ref]
        if spans != ref_spans:
            return f"entities {spans} != alone {ref_spans}", math.inf
        pairs = [(e["score"], r["score"]) for e, r in zip(got, ref, strict=True)]
        labels = None
    else:
        scores = got["scores"]
        if isinstance(scores, dict):  # native form: label -> score, in the head's label order
            if list(scores) != list(ref["scores"]):
                return f"score labels {list(scores)} != alone {list(ref['scores'])}", math.inf
            scores = list(scores.values())
        pairs = [(got["score"], ref["score"])]
        pairs += list(zip(scores, ref["scores"].values(), strict=True))
        labels = None if got["label"] == ref["label"] else f"{got['label']!r} != {ref['label']!r}"
    deviation = max((abs(a - b) for a, b in pairs), default=0.0)
    if labels is not None:
        return f"label {labels} (alone), scores off by up to {deviation:.3g}", deviation
    if deviation > TOLERANCE:
        return f"scores off by up to {deviation:.3g} (tolerance {TOLERANCE:g})", deviation
    return None, deviation
