"""``mts eval``: a trained head on a user's labelled file, through the exported ONNX graphs.

The head is an archive (what ``mts train`` wrote), a version directory holding head.json and
head.onnx, or a task served by the repository. Texts are tokenized with the repository's
tokenizer, run through its trunk up to the head's tap and then through the head, exactly the
graphs a server runs. Reported: per class (or per entity type) precision, recall, F1 and support,
the headline metric, and a confusion matrix (as counts, and as a PNG where matplotlib is
installed). Entity scores are conlleval's (exact span and type); the NER confusion matrix is per
word, by entity type (B-/I- folded) or O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from multitask_serve.modelrepo.archive import unpack_head
from multitask_serve.modelrepo.repository import HEAD_MODEL, HEAD_SPEC, ModelRepository
from multitask_serve.modelrepo.types import (
    HEAD_HIDDEN_INPUT,
    HEAD_MASK_INPUT,
    KINDS,
    HeadSpec,
    tap_name,
)
from multitask_serve.training import data_files as files
from multitask_serve.training.data_files import DataError, TextExample, TokenExample
from multitask_serve.training.features import encode_texts, encode_tokens, rust_tokenizer
from multitask_serve.training.metrics import (
    accuracy,
    confusion,
    entity_scores,
    macro_f1,
    per_class,
    per_entity_type,
)

MAX_ARCHIVE_BYTES = 2 << 30


class EvalError(ValueError):
    """The head or repository cannot be evaluated as asked."""


@dataclass
class Evaluation:
    task: str
    kind: str
    examples: int
    overall: dict[str, float]
    per_label: dict[str, dict[str, float]]
    confusion_labels: list[str]
    confusion: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def load_head(head: str, repo: ModelRepository) -> tuple[HeadSpec, bytes]:
    """An archive file, a directory with head.json and head.onnx, or a task in ``repo``."""
    path = Path(head)
    if path.is_file():
        return unpack_head(path.read_bytes(), MAX_ARCHIVE_BYTES)
    if path.is_dir():
        if not (path / HEAD_SPEC).is_file() and (path / "current").is_file():
            path = path / (path / "current").read_text().strip()
        if not (path / HEAD_SPEC).is_file():
            raise EvalError(f"{path} holds no {HEAD_SPEC}: expected a head version directory")
        return HeadSpec.from_json((path / HEAD_SPEC).read_bytes()), (path / HEAD_MODEL).read_bytes()
    if head in repo.tasks():
        stored = repo.read_head(head)
        return stored.spec, stored.model_path.read_bytes()
    raise EvalError(
        f"{head!r} is neither a head archive, a head directory nor a task in {repo.root}"
    )


def _session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def evaluate_file(
    head: str,
    data: Path,
    repo: ModelRepository,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int | None = None,
    batch_size: int = 32,
) -> Evaluation:
    spec, model = load_head(head, repo)
    trunk_spec = repo.read_trunk_spec()
    if spec.trunk_fingerprint != trunk_spec.fingerprint:
        raise EvalError(
            f"head {spec.task!r} was trained against another trunk (fingerprint "
            f"{spec.trunk_fingerprint[:12]}, repository {trunk_spec.fingerprint[:12]})"
        )
    traits = KINDS[spec.kind]
    if not traits.trained:
        raise EvalError(f"{spec.task} is a {spec.kind} head; mts eval scores classification heads")
    examples = _load(data, traits.per_token, text_column, label_column)
    labels = tuple(spec.labels)
    gold_labels = (
        {t for e in examples for t in e.tags}  # type: ignore[union-attr]
        if traits.per_token
        else {e.label for e in examples}  # type: ignore[union-attr]
    )
    unknown = sorted(gold_labels - set(labels))
    if unknown:
        raise DataError(
            f"labels the head does not know: {unknown[:5]} (it knows {list(labels)})", data
        )
    length = (
        max_length or spec.training.get("config", {}).get("max_length") or trunk_spec.max_length
    )
    tokenizer = rust_tokenizer(repo.tokenizer_path.read_bytes(), int(length))
    encode = encode_tokens if traits.per_token else encode_texts
    encoded = encode(tokenizer, examples, labels)  # type: ignore[arg-type]
    trunk, graph = _session(repo.trunk_model_path.read_bytes()), _session(model)
    tap = tap_name(spec.branch_layer)
    logits: list[np.ndarray] = []
    for start in range(0, len(encoded.ids), batch_size):
        rows = encoded.ids[start : start + batch_size]
        feeds = _feeds(rows, trunk_spec.input_names)
        (hidden,) = trunk.run([tap], feeds)
        (out,) = graph.run(
            None, {HEAD_HIDDEN_INPUT: hidden, HEAD_MASK_INPUT: feeds["attention_mask"]}
        )
        logits.extend(out[i, : len(r)] if traits.per_token else out[i] for i, r in enumerate(rows))
    if traits.per_token:
        return _tagging(spec, examples, logits, encoded.word_tokens or [], labels)  # type: ignore[arg-type]
    return _classification(spec, examples, logits, labels)  # type: ignore[arg-type]


def _load(
    data: Path, per_token: bool, text_column: str, label_column: str
) -> list[TextExample] | list[TokenExample]:
    suffix = data.suffix.lower()
    wanted = files.TOKEN_SUFFIXES if per_token else files.TEXT_SUFFIXES
    if suffix in wanted:
        if per_token:
            return files.load_conll(data)
        return files.load_text_file(data, text_column, label_column)
    kind = "a token-classification" if per_token else "a sequence-classification"
    raise DataError(
        f"{kind} head reads a {', '.join(wanted)} file, got {suffix or 'no suffix'}", data
    )


def _feeds(rows: list[list[int]], names: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    ids = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in feeds.items() if k in names}


def _classification(
    spec: HeadSpec, examples: list[TextExample], logits: list[np.ndarray], labels: tuple[str, ...]
) -> Evaluation:
    gold = [e.label for e in examples]
    pred = [labels[int(np.argmax(row))] for row in logits]
    ids = {label: i for i, label in enumerate(labels)}
    gold_ids, pred_ids = [ids[g] for g in gold], [ids[p] for p in pred]
    overall = {
        "accuracy": accuracy(gold_ids, pred_ids),
        "macro_f1": macro_f1(gold_ids, pred_ids, len(labels)),
    }
    return Evaluation(
        spec.task,
        str(spec.kind),
        len(examples),
        overall,
        per_class(gold, pred, labels),
        list(labels),
        confusion(gold, pred, labels),
    )


def _tagging(
    spec: HeadSpec,
    examples: list[TokenExample],
    logits: list[np.ndarray],
    word_tokens: list[list[int | None]],
    labels: tuple[str, ...],
) -> Evaluation:
    gold = [list(e.tags) for e in examples]
    pred = [
        [labels[int(np.argmax(rows[t]))] if t is not None else "O" for t in words]
        for rows, words in zip(logits, word_tokens, strict=True)
    ]
    types = ["O", *sorted({tag[2:] for tag in labels if tag != "O"})]

    def kind(tag: str) -> str:
        return "O" if tag == "O" else tag[2:]

    flat_gold = [kind(t) for tags in gold for t in tags]
    flat_pred = [kind(t) for tags in pred for t in tags]
    return Evaluation(
        spec.task,
        str(spec.kind),
        len(examples),
        entity_scores(gold, pred),
        per_entity_type(gold, pred),
        types,
        confusion(flat_gold, flat_pred, types),
    )


def write(evaluation: Evaluation, out: Path) -> list[Path]:
    """metrics.json always; confusion.png where matplotlib is installed."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json"]
    written[0].write_text(json.dumps(evaluation.as_dict(), indent=1) + "\n")
    try:
        import matplotlib
    except ImportError:
        return written
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, matrix = evaluation.confusion_labels, np.array(evaluation.confusion)
    size = 2.5 + 0.5 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"{evaluation.task}: {evaluation.examples} examples")
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    written.append(out / "confusion.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
