"""Near-duplicate tweets share a split; loader defects are refused with their file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from multitask_serve.training.data import (
    DataError,
    TextExample,
    load_conll,
    load_dataset,
    load_text_file,
    normalise_text,
    split_texts,
)

VARIANTS = [
    "Great flight, thanks!",
    "RT @united: Great flight, thanks!",
    "great flight thanks http://t.co/abc123",
    "@united great FLIGHT... thanks",
    "rt great flight thanks www.example.com/x",
]


def test_retweets_links_mentions_case_and_punctuation_share_one_key():
    assert {normalise_text(t) for t in VARIANTS} == {"great flight thanks"}
    assert normalise_text("great flight thanks") != normalise_text("great flight, no thanks")
    # A text of nothing but a mention and a link keeps a key of its own.
    assert normalise_text("@bob http://t.co/x") == "@bob http://t.co/x"


def test_near_duplicate_variants_never_straddle_splits():
    filler = [
        TextExample(f"tweet number {i} about flights", "neg" if i % 2 else "pos")
        for i in range(200)
    ]
    variants = [TextExample(t, "pos") for t in VARIANTS]
    for seed in range(20):
        split = split_texts([*filler, *variants], seed, name="t", source="t")
        homes = [
            name
            for name, part in (
                ("train", split.train),
                ("val", split.validation),
                ("test", split.test),
            )
            if any(e.text in VARIANTS for e in part)
        ]
        assert len(homes) == 1, (seed, homes)


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_a_conll_token_holding_a_space_is_refused_at_its_line(tmp_path: Path):
    path = _write(tmp_path, "ner.conll", "John\tB-PER\nlives\tO\nin\tO\nNew York\tB-LOC\n\n")
    with pytest.raises(DataError, match="line 4: token 'New York' contains a space") as err:
        load_conll(path)
    assert err.value.line == 4 and err.value.path == str(path)
    # Space-separated columns (CoNLL-2003: token POS chunk tag) still read token and tag.
    ok = _write(tmp_path, "c03.conll", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert load_conll(ok)[0].tokens == ("EU", "rejects")
    assert load_conll(ok)[0].tags == ("B-ORG", "O")


@pytest.mark.parametrize(
    "content",
    [
        'text,label\nhello there,pos\n"unclosed start,neg\nanother,pos\nmore,neg\n',
        'text,label\nhello there,pos\n"unclosed start,neg\nanother,pos\nmore,neg\n"x",pos\nz,neg\n',
    ],
    ids=["never-closed", "closed-lines-later"],
)
def test_an_unclosed_quote_is_reported_at_its_own_line(tmp_path: Path, content: str):
    path = _write(tmp_path, "q.csv", content)
    with pytest.raises(DataError, match="line 3: a quoted field opened on this line") as err:
        load_text_file(path)
    assert err.value.line == 3


def test_a_quoted_field_with_a_real_line_break_is_still_read(tmp_path: Path):
    path = _write(tmp_path, "ok.csv", 'text,label\n"first line\nsecond line",pos\nthird,neg\n')
    assert [e.text for e in load_text_file(path)] == ["first line\nsecond line", "third"]


def test_a_single_class_file_is_refused_for_a_classifier(tmp_path: Path):
    path = _write(tmp_path, "one.csv", "text,label\n" + "".join(f"t {i},pos\n" for i in range(30)))
    with pytest.raises(DataError, match="needs at least two labels") as err:
        load_dataset(str(path), seed=0)
    assert err.value.path == str(path)
    tags = _write(tmp_path, "o.conll", "".join(f"w{i}\tO\n\n" for i in range(30)))
    with pytest.raises(DataError, match="every tag is O"):
        load_dataset(str(tags), seed=0)
