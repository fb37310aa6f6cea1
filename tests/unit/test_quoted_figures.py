"""Figures the docs quote from results files are still the files' figures (tests/quotes lists
the passages and how each figure is read from its file). reports/REPORT.md is checked whole by
tests/unit/test_report_md.py, since it is generated from reports/results.json."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from tests.quotes import Quote, check, long_texts, measured, report, serving, tracing, training

QUOTES = [
    *report.report_quotes(),
    *training.candidate_quotes(),
    *training.build_quotes(),
    *training.seed_quotes(),
    *measured.bench_quotes(),
    *serving.serving_quotes(),
    *serving.target_quotes(),
    *serving.fleet_quotes(),
    *long_texts.long_text_quotes(),
    *tracing.tracing_quotes(),
]


def quote_id(quote: Quote) -> str:
    return f"{quote.doc}: {quote.text[:60]}"


@pytest.mark.parametrize("quote", QUOTES, ids=quote_id)
def test_each_quoted_figure_is_its_results_files_figure(quote: Quote) -> None:
    check(quote)


def test_a_figure_that_differs_from_its_file_fails_naming_what_the_doc_says(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"seconds": 214.68}))
    quote = Quote("doc.md", "took {:.0f} s against", "r.json", lambda d: (d["seconds"],))
    (tmp_path / "doc.md").write_text("Progressive\ntook 215 s\nagainst 58 s.")
    check(quote, tmp_path)
    (tmp_path / "doc.md").write_text("Progressive took 214 s against 58 s.")
    with pytest.raises(pytest.fail.Exception, match="the doc says 'took 214 s against'"):
        check(quote, tmp_path)
    (tmp_path / "doc.md").write_text("Progressive took longer.")
    with pytest.raises(pytest.fail.Exception, match="not in the doc"):
        check(quote, tmp_path)


def test_every_quote_names_a_figure_and_a_results_file() -> None:
    for quote in QUOTES:
        assert any(field is not None for _, field, _, _ in string.Formatter().parse(quote.text))
        assert quote.source.startswith(("reports/", "bench/results/")), quote
