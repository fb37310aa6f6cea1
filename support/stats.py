"""Summary statistics of repeated measurements, as the benchmarks' results files give them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np


def summary(values: Sequence[float]) -> dict[str, Any]:
    """The median over rounds with its spread (min, max) and every round's value, to 4 places."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "rounds": [round(v, 4) for v in values],
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``; NaN when there are none."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def phase_summaries(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per phase, ``summary`` of each numeric figure over its rounds (``rounds``: phase -> one
    dict of figures per round)."""
    return {
        name: {
            key: summary(values)
            for key in figures[0]
            if (values := [f[key] for f in figures if isinstance(f[key], int | float)])
        }
        for name, figures in rounds.items()
    }
