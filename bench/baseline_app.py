"""What a user would otherwise write: one FastAPI process serving three Hugging Face pipelines.

The baseline of bench/pipelines_vs_ours.py. Each task is its own full fine-tuned PyTorch copy of
the encoder behind a ``transformers.pipeline`` (two text-classification, one token-classification
with ``aggregation_strategy="simple"``), served by uvicorn with one worker. It is written the
plain way, and given what a careful user would give it: torch uses every core, inference runs
under ``torch.inference_mode``, and the texts of one request go through the pipeline as one batch.
Endpoints are sync ``def`` (FastAPI runs them in its thread pool), mirroring ours:
``POST /predict/<task>`` and ``POST /predict`` with ``tasks``.

``prepare_models`` writes the three model directories: all-MiniLM-L6-v2 with a sequence or token
classification layer on top and the default heads' labels. The added layers keep their random
initialisation (training them changes no speed or memory figure).

    .venv/bin/python -m bench.baseline_app --models DIR [--port 8001]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

TASKS = ("sentiment", "topic", "ner")


def baseline_serve(models: Path, port: int) -> list[str]:
    """The command line of this baseline serving ``models`` on ``port`` (run from the repository
    root, as the benchmarks are)."""
    return [
        sys.executable,
        "-m",
        "bench.baseline_app",
        "--models",
        str(models),
        "--port",
        str(port),
    ]


def prepare_models(out: Path, labels: dict[str, tuple[str, ...]], encoder: Path) -> None:
    """One full model directory per task, as ``save_pretrained`` writes it."""
    tokenizer = AutoTokenizer.from_pretrained(encoder, local_files_only=True)
    for task in TASKS:
        names = labels[task]
        auto = (
            AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
        )
        torch.manual_seed(0)
        model = auto.from_pretrained(
            encoder,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            local_files_only=True,
        )
        model.save_pretrained(out / task)
        tokenizer.save_pretrained(out / task)


class Body(BaseModel):
    inputs: str | list[str]
    tasks: list[str] | None = None


def create_baseline_app(models: Path) -> FastAPI:
    torch.set_num_threads(os.cpu_count() or 1)
    pipes = {
        "sentiment": pipeline("text-classification", model=str(models / "sentiment"), top_k=None),
        "topic": pipeline("text-classification", model=str(models / "topic"), top_k=None),
        "ner": pipeline(
            "token-classification", model=str(models / "ner"), aggregation_strategy="simple"
        ),
    }

    def run(task: str, texts: list[str]) -> list[Any]:
        if task not in pipes:
            raise HTTPException(404, f"unknown task {task!r}")
        with torch.inference_mode():
            out = pipes[task](texts, batch_size=len(texts))
        if task == "ner":
            return [[{**span, "score": float(span["score"])} for span in spans] for spans in out]
        return [
            {
                "label": scores[0]["label"],
                "score": scores[0]["score"],
                "scores": {s["label"]: s["score"] for s in scores},
            }
            for scores in out
        ]

    def shaped(body: Body, outputs: list[Any]) -> Any:
        return outputs[0] if isinstance(body.inputs, str) else outputs

    app = FastAPI()

    @app.post("/predict/{task}")
    def predict_task(task: str, body: Body) -> dict[str, Any]:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        return {"task": task, "outputs": shaped(body, run(task, texts))}

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        return {task: {"outputs": shaped(body, run(task, texts))} for task in body.tasks or []}

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args()
    uvicorn.run(
        create_baseline_app(args.models),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
