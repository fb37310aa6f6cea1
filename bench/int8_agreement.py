"""The int8 trunk's answers against the fp32 trunk's, per CPU: taps and labels, old and new graph.

The int8 trunk's integer products used to run on ONNX Runtime's u8 x s8 kernel, which on x86
without VNNI adds pairs of byte products into saturating 16-bit sums; the graph now stores its
weights as uint8 and runs the u8 x u8 kernel, exact on every CPU (``export/per_row.py``). Both
graphs are made here from the repository's fp32 trunk ("u8s8" is the current graph with its
weights put back to int8, which is what the method stored before) and served through the real
service (``create_app``, one request per batch of texts, all tasks at once) beside the fp32 trunk
with the same fp32 heads:

- taps: max abs difference and min per-token cosine to the fp32 trunk on the build's sample
  texts (what ``mts quantize`` checks and records);
- labels: on ``--texts`` random tweets (the sentiment corpus), the share of texts whose
  sentiment and topic label is the fp32 trunk's, and NER entity spans (type, start, end) in
  common with the fp32 trunk's;
- whether this CPU saturates: ``saturating_products`` of each graph, and the CPU's flags.

    .venv/bin/python -m bench.int8_agreement [--repo model-repo] [--texts 800]
        [--out bench/results/int8-agreement-<cpu flavour>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.export.per_row import (
    quantize_per_row,
    saturating_products,
    with_int8_weights,
)
from multitask_serve.export.quantize import INT8, METHOD, compare_taps
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import TrunkVariant, trunk_fingerprint
from multitask_serve.service.app import create_app
from multitask_serve.service.settings import Settings
from multitask_serve.training.data_files import read_sentiment
from support.machine import cpu_flags, cpu_flavour, machine
from support.results import write_results

TASKS = ["sentiment", "topic", "ner"]


def with_variant(source: Path, work: Path, name: str, model: bytes) -> Path:
    """A copy of the repository serving ``model`` as its int8 trunk (fp32 heads only)."""
    root = work / name
    shutil.copytree(source, root)
    repo = ModelRepository(root)
    spec = repo.read_trunk_spec()
    tokenizer = repo.tokenizer_path.read_bytes()
    if INT8 in spec.variants:
        repo.trunk_variant_path(INT8).unlink()
        spec = dataclasses.replace(spec, variants={})
        (root / "trunk" / "trunk.json").write_text(spec.to_json())
    variant = TrunkVariant(
        file=f"model.{name}.onnx",
        fingerprint=trunk_fingerprint(model, tokenizer),
        # The u8 x u8 graph is the current method's; the u8 x s8 one is named as what it is.
        method=METHOD if name == "u8u8" else f"{name}: per-row int8 with int8 weights",
        max_abs_diff=0.0,
        min_cosine=1.0,
        versions={},
    )
    repo.add_trunk_variant(INT8, variant, model, replace=False)
    return root


def answers(root: Path, precision: str, texts: list[str]) -> list[dict[str, Any]]:
    settings = Settings(repository=root, trunk_precision=precision)  # type: ignore[call-arg]
    out = []
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        for i in range(0, len(texts), 16):
            r = client.post("/predict", json={"inputs": texts[i : i + 16], "tasks": TASKS})
            r.raise_for_status()
            body = r.json()
            for j in range(len(texts[i : i + 16])):
                out.append({task: body[task]["outputs"][j] for task in TASKS})
    return out


def agreement(ref: list[dict[str, Any]], got: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = list(zip(ref, got, strict=True))

    def spans(answer: dict[str, Any]) -> set[tuple[str, int, int]]:
        return {(e["entity"], e["start"], e["end"]) for e in answer["ner"]}

    return {
        "sentiment_labels_agree": float(
            np.mean([a["sentiment"]["label"] == b["sentiment"]["label"] for a, b in pairs])
        ),
        "topic_labels_agree": float(
            np.mean([a["topic"]["label"] == b["topic"]["label"] for a, b in pairs])
        ),
        "ner_spans_fp32": sum(len(spans(a)) for a, _ in pairs),
        "ner_spans_int8": sum(len(spans(b)) for _, b in pairs),
        "ner_spans_in_common": sum(len(spans(a) & spans(b)) for a, b in pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--texts", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    flags = cpu_flags()
    out = args.out or Path(f"bench/results/int8-agreement-{cpu_flavour(flags)}.json")
    repo = ModelRepository(args.repo)
    spec = repo.read_trunk_spec()
    reference = repo.trunk_model_path.read_bytes()
    tokenizer = repo.tokenizer_path.read_bytes()
    u8u8 = quantize_per_row(reference)
    graphs = {"u8u8": u8u8, "u8s8": with_int8_weights(u8u8)}
    tweets = [e.text for e in read_sentiment()[0]]
    texts = random.Random(args.seed).sample(tweets, args.texts)
    results: dict[str, Any] = {
        "machine": machine(),
        "cpu_flavour": cpu_flavour(flags),
        "texts": args.texts,
        "heads": {t: repo.read_head(t).spec.training.get("strategy") for t in TASKS},
        "graphs": {},
    }
    with tempfile.TemporaryDirectory() as work:
        fp32 = answers(args.repo, "fp32", texts)
        for name, model in graphs.items():
            diff, cosine = compare_taps(reference, model, spec, tokenizer)
            root = with_variant(args.repo, Path(work), name, model)
            got = answers(root, INT8, texts)
            results["graphs"][name] = {
                "saturating_products": len(saturating_products(model)),
                "taps_max_abs_diff": diff,
                "taps_min_cosine": cosine,
                **agreement(fp32, got),
            }
            print(name, json.dumps(results["graphs"][name]), flush=True)
    write_results(out, results, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
