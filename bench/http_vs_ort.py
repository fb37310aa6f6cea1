"""The service over HTTP against raw ONNX Runtime in-process, same trunk and head, at saturation.

Comparison 1 of the benchmark plan. Both sides tokenize and run the trunk and one zero-shot head
on the same texts. The raw side runs in a loop in this process; the HTTP side is a real
``mts serve`` process driven by an asyncio client with enough requests in flight to saturate
it. The client shares the machine's cores with the server, which the HTTP side pays for.

    .venv/bin/python -m bench.http_vs_ort [--repo model-repo] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bench.loadgen import closed_loop
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.sessions import CPU, HeadSession, Runtime
from multitask_serve.service.trunk import TrunkSession
from support.servers import serving as mts_serving

TEXTS = [
    "The central bank raised interest rates by half a point on Thursday.",
    "What a brilliant match, the striker scored twice in the final minutes!",
    "I am not sure this phone was worth the money.",
    "Parliament votes on the new climate bill next week.",
]
TASK = "topic-zs"


class RawPipeline:
    """Tokenize, trunk, one head, softmax in this process with the service's own session
    wrappers (same options), and no HTTP, no batcher."""

    def __init__(self, repo: ModelRepository, task: str = TASK, runtime: Runtime = CPU) -> None:
        spec = repo.read_trunk_spec()
        self._trunk = TrunkSession(repo.trunk_model_path, runtime)
        stored = repo.read_head(task)
        self._head = HeadSession(
            stored.model_path.read_bytes(), stored.spec.output_name, spec.hidden_size, runtime
        )
        self._tokenizer = Tokenizer.from_file(str(repo.tokenizer_path))
        self._tokenizer.enable_truncation(max_length=spec.max_length)
        self._tokenizer.enable_padding()
        self._tap = f"tap_{stored.spec.branch_layer}"

    def __call__(self, texts: list[str]) -> np.ndarray:
        enc = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._trunk.run(feeds, [self._tap])[self._tap]
        logits = self._head.run(hidden, mask)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        probs: np.ndarray = exp / exp.sum(-1, keepdims=True)
        return probs


def raw_throughput(repo: ModelRepository, batch: int, seconds: float) -> float:
    pipeline = RawPipeline(repo)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pipeline(texts)
        done += batch
    return done / seconds


def http_throughput(url: str, batch: int, seconds: float, concurrency: int) -> float:
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    body = {"inputs": texts if batch > 1 else texts[0]}
    return closed_loop(url, lambda _: (f"/predict/{TASK}", body, batch), seconds, concurrency)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    if not args.repo.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "multitask_serve",
                "build",
                "--no-train",
                "--repo",
                str(args.repo),
            ],
            check=True,
        )
    repo = ModelRepository(args.repo)
    print(f"task {TASK}, {args.seconds:.0f} s per measurement\n")
    print(
        "| texts per request | server batch limit | raw ORT texts/s | HTTP texts/s (in flight) "
        "| HTTP / raw | target |"
    )
    print("|---|---|---|---|---|---|")
    for batch, concurrency, target in ((16, 4, 0.90), (1, 16, 0.75)):
        raw = raw_throughput(repo, batch, args.seconds)
        # Same batch size as the raw side, then with the batcher free to merge requests.
        for limit in (batch, 32):
            with serving(args.repo, limit) as url:
                http = http_throughput(url, batch, args.seconds, concurrency)
            print(
                f"| {batch} | {limit} | {raw:.0f} | {http:.0f} ({concurrency}) | "
                f"{http / raw:.2f}x | >= {target:.2f}x |"
            )


@contextlib.contextmanager
def serving(repo: Path, batch_limit: int, **settings: str) -> Iterator[str]:
    """``mts serve`` with a batch limit and further ``MTS_*`` ``settings``; yields its URL."""
    env = {"MTS_LOG_LEVEL": "warning", "MTS_BATCH_MAX_TEXTS": str(batch_limit), **settings}
    with mts_serving(repo, env=env, timeout=300) as url:
        yield url


if __name__ == "__main__":
    main()
