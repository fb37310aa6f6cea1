"""Results files: the JSON every benchmark writes under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(path: Path, results: Any, *, indent: int = 1, sort_keys: bool = False) -> None:
    """Write ``results`` to ``path`` as JSON (``indent`` spaces, a final newline), creating its
    folder if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=indent, sort_keys=sort_keys) + "\n")


def read_results(path: Path, default: Any) -> Any:
    """A results file's contents, or ``default`` where there is none yet (scripts that add one
    labelled run to a file that keeps the others)."""
    return json.loads(path.read_text()) if path.exists() else default


def write_phases(path: Path, results: dict[str, Any]) -> None:
    """Summarise ``results["rounds"]`` (phase -> figures per round) into ``results["phases"]``,
    write the file and print the summaries."""
    from support.stats import phase_summaries

    results["phases"] = phase_summaries(results["rounds"])
    write_results(path, results)
    print(json.dumps(results["phases"], indent=1))
