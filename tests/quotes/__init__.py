"""Figures the docs quote from results files, and the check that they are still the files'.

Each ``Quote`` is a passage as a doc prints it, with format fields (``{:.3f}``) where figures go,
the results file the figures come from, and how to read them from it. ``check`` fills the passage
from the file and looks for it in the doc (whitespace collapsed: line wrapping does not matter).
A rerun that moves a figure, or a doc edit that changes one, fails until the other follows; a
passage reworded fails too, so that its entry is reworded with it. The passages live by source:
``report`` (reports/results.json), ``training`` (the default build's candidates, rounds and seeds),
``measured`` (the other bench/results files); tests/unit/test_quoted_figures.py runs them all.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAINING, DISCUSSION = "docs/training.md", "reports/DISCUSSION.md"


@dataclass(frozen=True)
class Quote:
    doc: str
    text: str  # the passage, with a format field per figure
    source: str  # a results file: JSON, or text (a log) for any other suffix
    figures: Callable[[Any], tuple[Any, ...]]

    def expected(self, root: Path = ROOT) -> list[str]:
        """The passage as the file's figures print: rounded as Python rounds, and with a figure
        the file stores at a tie (6.975) rounded up, as a writer reading the file would."""
        figures = self.figures(load(root / self.source))
        up = [f * (1 + 1e-9) if isinstance(f, float) else f for f in figures]
        return [prose(self.text.format(*f)) for f in (figures, up)]


@cache
def load(path: Path) -> Any:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else text


def prose(text: str) -> str:
    """Whitespace runs as one space: a doc's line breaks do not split a passage."""
    return re.sub(r"\s+", " ", text).strip()


def check(quote: Quote, root: Path = ROOT) -> None:
    """Fail naming what the doc says where the passage's figures differ from the file's."""
    doc = prose((root / quote.doc).read_text())
    expected = quote.expected(root)
    if any(e in doc for e in expected):
        return
    pattern = "".join(
        re.escape(re.sub(r"\s+", " ", literal)) + ("(.+?)" if field is not None else "")
        for literal, field, _, _ in string.Formatter().parse(quote.text)
    )
    found = re.search(pattern.strip(), doc)
    said = f"the doc says {found.group(0)!r}" if found else "the passage is not in the doc"
    pytest.fail(f"{quote.doc}: {said}; {quote.source} gives {expected[0]!r}")
