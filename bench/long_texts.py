"""Long texts read whole in overlapping windows, against cutting them: quality on real long texts,
and what a window costs.

Quality (in process, the serving engine on a built repository, no HTTP):
- topic on the BBC test articles (the topic task's own split): accuracy and macro-F1 read whole
  in windows of the served length, cut at the served length, and cut at 128 tokens (the length
  the heads were trained at); the share of articles longer than the served length. Each pooling
  rule for label scores (``WINDOW_POOLING``: mean probability, mean logit, max probability) and
  each window overlap is tried, which is how the defaults were chosen (on these articles: the
  test split, as the issue asks, so the choice is reported with every alternative's figure).
- NER on long documents made by joining consecutive test sentences: entity F1 (exact type and
  character span) read whole vs cut, and the recall of gold entities that start past the first
  window against the recall of the same entities when their sentences are sent alone.
- The check a user would make: a ~600-token article with a person's name in its last sentence,
  through ``POST /predict/ner`` of a running ``mts serve`` with default settings and with
  ``"truncate": true``.

Cost (a running ``mts serve``, closed loop): one text of 1, 4 and 16 windows per request against
the same tokens sent as separate texts of one window each, interleaved over rounds; texts/s,
tokens/s, p50/p99.

    python -m bench.long_texts --repo model-repo --out bench/results/long-texts.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

from bench.loadgen import Request, measure
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service import outputs as outputs_module
from multitask_serve.service import postprocess
from multitask_serve.service.app import create_app
from multitask_serve.service.settings import Settings
from multitask_serve.service.types import Job
from multitask_serve.training.data import TextExample, TokenExample, load_dataset
from multitask_serve.training.metrics import accuracy, macro_f1
from support.results import read_results, write_results
from support.servers import start_server, stop
from support.stats import summary

RULES = ("mean", "logits", "max")
OVERLAPS = (0, 32, 64, 96, 127)  # 127: half the default trunk's 254 tokens of text a window
# Entity F1 differences on the validation documents smaller than this are not worth the windows:
# a point is two or three entities of theirs.
F1_TOLERANCE = 0.01
CHUNK = 16  # texts per engine call
PERSON_SENTENCE = " The report was written by John Smith."
PATH = "/predict/topic"


def engine_for(repo: Path, **settings: Any) -> Any:
    """The serving engine and registry of ``repo``, with no cap on windows per text (the
    longest articles take more than the default's)."""
    settings = {"max_windows": 0, **settings}
    app = create_app(Settings(repository=repo, **settings), CollectorRegistry())
    return app.state.services


def predict(services: Any, task: str, texts: list[str], whole: bool) -> tuple[list[Any], list[int]]:
    """Outputs and windows per text, in engine calls of ``CHUNK`` texts."""
    head = services.registry.loaded([task])[task]
    outputs, windows = [], []
    for start in range(0, len(texts), CHUNK):
        done = services.engine.predict_many(
            [Job({task: head}, texts[start : start + CHUNK], whole)]
        )
        outputs.extend(done[0].results[task].outputs)
        windows.extend(done[0].windows)
    return outputs, windows


def topic_runs(
    services: Any, texts: list[str], whole: bool
) -> tuple[list[dict[str, Any]], list[int], list[tuple[np.ndarray, np.ndarray]]]:
    """Outputs, windows per text, and for each text read in several windows (in order) what was
    pooled: its windows' logits and weights, from which every pooling rule's answer follows."""
    pooled: list[tuple[np.ndarray, np.ndarray]] = []
    original = outputs_module.pool_probabilities

    def recording(logits: np.ndarray, weights: np.ndarray, rule: str | None = None) -> np.ndarray:
        pooled.append((logits.copy(), weights.copy()))
        return original(logits, weights, rule)

    outputs_module.pool_probabilities = recording
    try:
        outputs, windows = predict(services, "topic", texts, whole)
    finally:
        outputs_module.pool_probabilities = original
    return outputs, windows, pooled


def topic_scores(
    test: list[TextExample],
    labels: tuple[str, ...],
    outputs: list[dict[str, Any]],
    windows: list[int],
    pooled: list[tuple[np.ndarray, np.ndarray]],
    rule: str,
) -> dict[str, float]:
    """Accuracy and macro-F1 with ``rule`` pooling the texts read in several windows."""
    by_rule = iter(pooled)
    pred = []
    for output, n in zip(outputs, windows, strict=True):
        if n > 1:
            logits, weights = next(by_rule)
            pred.append(int(postprocess.pool_probabilities(logits, weights, rule).argmax()))
        else:
            pred.append(labels.index(output["label"]))
    gold = [labels.index(e.label) for e in test]
    return {
        "accuracy": round(accuracy(gold, pred), 4),
        "macro_f1": round(macro_f1(gold, pred, len(labels)), 4),
    }


def topic(repo: Path, overlap_chosen: int) -> dict[str, Any]:
    """Every pooling rule at every overlap on the validation articles (the rules agree within an
    article or two everywhere, so the default stays the mean probability: docs/architecture.md);
    the test articles at the overlap NER chose, read whole with each rule, cut at the served
    length and cut at 128 tokens."""
    split = load_dataset("topic", seed=0)
    validation = [e for e in split.validation if isinstance(e, TextExample)]
    test = [e for e in split.test if isinstance(e, TextExample)]
    served = engine_for(repo, window_overlap=overlap_chosen)
    labels = served.registry.loaded(["topic"])["topic"].spec.labels
    encoder = served.engine._encoder
    grid: dict[str, dict[str, Any]] = {rule: {} for rule in RULES}
    for overlap in OVERLAPS:
        services = engine_for(repo, window_overlap=overlap)
        runs = topic_runs(services, [e.text for e in validation], True)
        for rule in RULES:
            grid[rule][str(overlap)] = topic_scores(validation, labels, *runs, rule)
            print("topic validation", rule, overlap, grid[rule][str(overlap)], flush=True)
    texts = [e.text for e in test]
    windowed = topic_runs(served, texts, True)
    windows = windowed[1]
    rule = postprocess.WINDOW_POOLING
    return {
        "articles": {"validation": len(validation), "test": len(test)},
        "served_length": encoder.max_length,
        "overlap": encoder.overlap,
        "pooling": rule,
        "test_longer_than_served_length": round(sum(n > 1 for n in windows) / len(test), 4),
        "test_windows_per_article": {
            "median": statistics.median(windows),
            "mean": round(statistics.fmean(windows), 3),
            "max": max(windows),
        },
        "validation_windowed_by_rule_and_overlap": grid,
        "test": {
            "windowed": topic_scores(test, labels, *windowed, rule),
            "windowed_other_rules": {
                other: topic_scores(test, labels, *windowed, other) for other in RULES
            },
            "cut_at_served_length": topic_scores(
                test, labels, *topic_runs(served, texts, False), rule
            ),
            "cut_at_128": topic_scores(
                test, labels, *topic_runs(engine_for(repo, max_length=128), texts, False), rule
            ),
        },
    }


# A document: its text, its gold entities as (type, start, end), where each sentence starts.
Document = tuple[str, set[tuple[str, int, int]], list[int]]


def documents(sentences: list[TokenExample], per_document: int) -> list[Document]:
    """Consecutive sentences joined into documents: the text, its gold entities as (type,
    start, end) character spans, and where each sentence starts."""
    docs = []
    for first in range(0, len(sentences) - per_document + 1, per_document):
        text, gold, starts = "", set(), []
        for sentence in sentences[first : first + per_document]:
            if text:
                text += " "
            starts.append(len(text))
            offsets = []
            for token in sentence.tokens:
                offsets.append((len(text), len(text) + len(token)))
                text += token + " "
            text = text[:-1]
            gold |= gold_spans(sentence.tags, offsets)
        docs.append((text, gold, starts))
    return docs


def gold_spans(tags: tuple[str, ...], offsets: list[tuple[int, int]]) -> set[tuple[str, int, int]]:
    """BIO tags over words -> (type, start, end) character spans (an ``I-`` that continues no
    entity of its type starts one, as the service decodes)."""
    spans: set[tuple[str, int, int]] = set()
    current: tuple[str, int, int] | None = None
    for tag, (start, end) in zip([*tags, "O"], [*offsets, (0, 0)], strict=True):
        prefix, _, kind = tag.partition("-")
        if current is not None and prefix == "I" and kind == current[0]:
            current = (kind, current[1], end)
            continue
        if current is not None:
            spans.add(current)
            current = None
        if prefix in ("B", "I") and kind:
            current = (kind, start, end)
    return spans


def f1(gold: set[Any], found: set[Any]) -> dict[str, float]:
    hit = len(gold & found)
    precision = hit / len(found) if found else 0.0
    recall = hit / len(gold) if gold else 0.0
    score = 2 * precision * recall / (precision + recall) if hit else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(score, 4)}


def alone_entities(services: Any, docs: list[Document]) -> set[tuple[int, str, int, int]]:
    """Each document's sentences sent alone, their entities placed in the document."""
    found: set[tuple[int, str, int, int]] = set()
    for d, (text, _, starts) in enumerate(docs):
        ends = [start - 1 for start in starts[1:]] + [len(text)]
        parts = [text[start:end] for start, end in zip(starts, ends, strict=True)]
        outputs, _ = predict(services, "ner", parts, False)
        for start, spans in zip(starts, outputs, strict=True):
            found |= {(d, e["entity"], start + e["start"], start + e["end"]) for e in spans}
    return found


def document_entities(
    services: Any, docs: list[Document], whole: bool
) -> tuple[set[tuple[int, str, int, int]], list[int]]:
    outputs, windows = predict(services, "ner", [text for text, _, _ in docs], whole)
    found = {(d, e["entity"], e["start"], e["end"]) for d, o in enumerate(outputs) for e in o}
    return found, windows


def ner(repo: Path, per_document: int) -> dict[str, Any]:
    """The overlap chosen on documents of validation sentences: the smallest (the cheapest: a
    text of n tokens takes about n / (window - overlap) windows) whose entity F1 is within
    ``F1_TOLERANCE`` of the best; on the test documents: read whole with it, cut, and each
    sentence alone, with the recall of gold entities in and past the first window for each."""
    split = load_dataset("ner", seed=0)

    def golds(docs: list[Document]) -> set[tuple[int, str, int, int]]:
        return {(d, *span) for d, (_, spans, _) in enumerate(docs) for span in spans}

    validation = documents(
        [e for e in split.validation if isinstance(e, TokenExample)], per_document
    )
    by_overlap = {}
    for overlap in OVERLAPS:
        found, windows = document_entities(
            engine_for(repo, window_overlap=overlap), validation, True
        )
        by_overlap[str(overlap)] = f1(golds(validation), found) | {
            "windows_per_document": statistics.median(windows)
        }
        print("ner validation", overlap, by_overlap[str(overlap)], flush=True)
    best = max(scores["f1"] for scores in by_overlap.values())
    chosen = min(o for o in OVERLAPS if by_overlap[str(o)]["f1"] >= best - F1_TOLERANCE)
    served = engine_for(repo, window_overlap=chosen)
    encoder = served.engine._encoder
    docs = documents([e for e in split.test if isinstance(e, TokenExample)], per_document)
    gold = golds(docs)
    # Where each document's first window ends (characters): gold entities that start at or past
    # it are the ones a cut text cannot find.
    first_end = {}
    for d, (text, _, _) in enumerate(docs):
        e = encoder.encode([text], whole=False).batch.encodings[0]
        first_end[d] = max(end for _, end in e.offsets)
    late = {g for g in gold if g[2] >= first_end[g[0]]}
    early = gold - late
    windowed, windows = document_entities(served, docs, True)
    ways = {
        "windowed": windowed,
        "cut": document_entities(served, docs, False)[0],
        "sentences_alone": alone_entities(served, docs),
    }
    test: dict[str, Any] = {}
    for name, found in ways.items():
        test[name] = f1(gold, found) | {
            "recall_in_first_window": f1(early, found & early)["recall"],
            "recall_past_first_window": f1(late, found & late)["recall"],
        }
    alone = ways["sentences_alone"]
    return {
        "sentences_per_document": per_document,
        "overlap_chosen": chosen,
        "overlap_default": engine_for(repo).engine._encoder.overlap,
        "validation": {"documents": len(validation), "windowed_by_overlap": by_overlap},
        "test": {
            "documents": len(docs),
            "windows_per_document": statistics.median(windows),
            "gold_entities": len(gold),
            "gold_entities_past_first_window": len(late),
            **test,
            # Entities past the first window found one way and not the other (paired).
            "past_first_window_found_windowed_not_alone": len((windowed - alone) & late),
            "past_first_window_found_alone_not_windowed": len((alone - windowed) & late),
        },
    }


def person_at_the_end(repo: Path, url: str) -> dict[str, Any]:
    """A ~600-token article whose last sentence names a person, through a running server."""
    import httpx

    split = load_dataset("topic", seed=0)
    article = next(
        e.text for e in split.test if isinstance(e, TextExample) and 2400 <= len(e.text) <= 3200
    )
    text = article.rstrip() + PERSON_SENTENCE
    at = text.rindex("John Smith")
    out: dict[str, Any] = {
        "characters": len(text),
        "tokens": len(token_offsets(repo, text)),
        "name_at": [at, at + len("John Smith")],
        "text": text,
    }
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, body in (
            ("default", {"inputs": text}),
            ("truncate", {"inputs": text, "truncate": True}),
        ):
            answer = client.post("/predict/ner", json=body).json()
            persons = [e for e in answer["outputs"] if e["start"] >= at - 1]
            out[name] = {
                "windows": answer["windows"],
                "truncated": answer["truncated"],
                "entities_in_last_sentence": persons,
                "found_the_name": any(text[e["start"] : e["end"]] == "John Smith" for e in persons),
            }
    return out


def cost_table(repo: Path, url: str, seconds: float, rounds: int, in_flight: int) -> dict[str, Any]:
    """One text of 1, 4 and 16 windows per request against the same tokens as texts of one
    window each (cut at window-sized token boundaries), interleaved over ``rounds``."""
    services = engine_for(repo)
    encoder = services.engine._encoder
    split = load_dataset("topic", seed=0)
    stream = " ".join(e.text for e in split.test[:40] if isinstance(e, TextExample))
    offsets = token_offsets(repo, stream)
    capacity, step = encoder.capacity, encoder.capacity - encoder.overlap
    shapes: dict[str, Any] = {}
    requests: dict[tuple[int, str], tuple[dict[str, Any], int]] = {}
    for windows in (1, 4, 16):
        n = capacity + (windows - 1) * step
        text = stream[: offsets[n - 1][1]]
        pieces = [
            stream[offsets[i][0] : offsets[min(i + capacity, n) - 1][1]]
            for i in range(0, n, capacity)
        ]
        taken = encoder.encode([text], whole=True).windows[0]
        shapes[str(windows)] = {"tokens": n, "windows": taken, "piece_texts": len(pieces)}
        requests[(windows, "windowed")] = ({"inputs": [text]}, 1)
        requests[(windows, "pieces")] = ({"inputs": pieces}, len(pieces))
    seen: dict[tuple[int, str], list[dict[str, float]]] = {key: [] for key in requests}
    for _ in range(rounds):
        for key, (body, texts) in requests.items():
            run = measure(url, same(body, texts), seconds, in_flight)
            seen[key].append(
                {
                    "requests_per_s": run.requests_per_s,
                    "tokens_per_s": run.requests_per_s * shapes[str(key[0])]["tokens"],
                    "p50_ms": run.percentile_ms(50),
                    "p99_ms": run.percentile_ms(99),
                }
            )
            print("cost", key, seen[key][-1], flush=True)
    for (windows, side), runs in seen.items():
        shapes[str(windows)][side] = {k: summary([r[k] for r in runs]) for k in runs[0]}
    for shape in shapes.values():
        shape["windowed_vs_pieces_tokens_per_s"] = round(
            shape["windowed"]["tokens_per_s"]["median"] / shape["pieces"]["tokens_per_s"]["median"],
            3,
        )
    return {
        "served_length": encoder.max_length,
        "overlap": encoder.overlap,
        "in_flight": in_flight,
        "seconds": seconds,
        "rounds": rounds,
        "shapes": shapes,
    }


def same(body: dict[str, Any], texts: int) -> Callable[[int], Request]:
    """Request i, whatever i: the same body every time."""
    return lambda i: (PATH, body, texts)


def token_offsets(repo: Path, text: str) -> list[tuple[int, int]]:
    """Every token's character span in ``text`` (special tokens aside, nothing cut)."""
    tokenizer = Tokenizer.from_file(str(ModelRepository(repo).tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return list(tokenizer.encode(text, add_special_tokens=False).offsets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--sentences-per-document", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument(
        "--parts",
        default="quality,person,cost",
        help="comma-separated: quality, person, cost (the results file keeps the others' figures)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/long-texts.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = set(args.parts.split(","))
    results: dict[str, Any] = read_results(args.out, {})
    results |= {
        "command": "python -m bench.long_texts "
        f"--repo {args.repo} --sentences-per-document {args.sentences_per_document} "
        f"--seconds {args.seconds} --rounds {args.rounds} --in-flight {args.in_flight}",
    }
    if "quality" in parts:
        started = time.perf_counter()
        results["ner"] = ner(args.repo, args.sentences_per_document)
        results["topic"] = topic(args.repo, results["ner"]["overlap_chosen"])
        results["quality_seconds"] = round(time.perf_counter() - started, 1)
    if parts & {"person", "cost"}:
        proc, url = start_server(args.repo)
        try:
            if "person" in parts:
                results["person_at_the_end"] = person_at_the_end(args.repo, url)
            if "cost" in parts:
                results["cost"] = cost_table(
                    args.repo, url, args.seconds, args.rounds, args.in_flight
                )
        finally:
            stop(proc)
    write_results(args.out, results)
    print(args.out)


if __name__ == "__main__":
    main()
