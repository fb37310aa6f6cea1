"""Tiny real things for tests: a random-weight BERT with its own WordPiece tokenizer (from
support/tiny.py, which the benchmarks share), heads and their archives; and what tests of a running
service compare (probe outputs, a repository's files).

Needs torch: the unit tier never imports it (tests/conftest.py imports it inside fixtures).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.modules import Head, top_layers
from multitask_serve.export.trunk import export_trunk
from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.types import HeadSpec, Kind
from multitask_serve.service.memory import (
    CONCURRENT_RUNS,
    MIB,
    TARGET_SHARE,
    ActivationModel,
    MemoryBudget,
)
from support.tiny import (  # noqa: F401 (the tests import these from here)
    TINY_HIDDEN,
    TINY_LAYERS,
    WORDS,
    tiny_tokenizer,
    write_tiny_encoder,
)

NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
PROBES = ["john scored a great goal in the final", "the bank rates fell", "i love paris", "ok"]


def random_head(
    encoder: Encoder, kind: Kind, num_labels: int, k: int, seed: int, pooling: str = "mean"
) -> Head:
    """A head owning (perturbed) copies of the top k layers and a random classifier."""
    torch.manual_seed(seed)
    layers = top_layers(encoder, k)
    with torch.no_grad():
        for p in layers.parameters():
            p.add_(0.05 * torch.randn_like(p))  # stands in for fine-tuning
    return Head(kind, encoder.hidden_size, num_labels, layers, pooling=pooling).eval()


def export_head(
    exporter: HeadExporter, task: str, kind: Kind, labels: tuple[str, ...], k: int, seed: int
) -> tuple[HeadSpec, bytes]:
    head = random_head(exporter.encoder, kind, len(labels), k, seed)
    return exporter.classification(task, head, labels, {"strategy": f"top-{k}", "seed": seed})


def budget_with_room(model: ActivationModel, room: int, resident: int = 100 * MIB) -> MemoryBudget:
    """A memory budget that leaves one run ``room`` bytes, whatever this process holds: the
    limit is set for a fixed resident size."""
    limit_mb = (CONCURRENT_RUNS * room + resident) / TARGET_SHARE / MIB
    return MemoryBudget(limit_mb, model, resident=lambda: resident)


def archive(spec_and_model: tuple[HeadSpec, bytes]) -> bytes:
    return pack_head(*spec_and_model)


def head_archives(exporter: HeadExporter, other_encoder: Encoder) -> dict[str, bytes]:
    """Head archives of every trained kind, plus one made against another trunk."""
    foreign_trunk, _ = export_trunk(other_encoder)
    foreign = HeadExporter(other_encoder, foreign_trunk)
    sentiment = ("negative", "neutral", "positive")
    return {
        "sentiment": archive(
            export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=1)
        ),
        "sentiment-v2": archive(
            export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=2)
        ),
        "topic": archive(
            export_head(
                exporter,
                "topic",
                Kind.SEQUENCE_CLASSIFICATION,
                ("business", "politics", "sport"),
                k=2,
                seed=3,
            )
        ),
        "ner": archive(
            export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, k=1, seed=4)
        ),
        "foreign": archive(
            export_head(foreign, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=1)
        ),
    }


def outputs(client: TestClient) -> dict[str, object]:
    """Every served task's raw outputs for the probe batch (one shape, one composition)."""
    served = [t["task"] for t in client.get("/tasks").json()["tasks"]]
    return {
        task: client.post(f"/predict/{task}", json={"inputs": PROBES}).json()["outputs"]
        for task in served
    }


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path: the repository byte for byte."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files
