"""The service over HTTP against raw ONNX Runtime in-process, same trunk and head, at saturation.

Comparison 1 of the benchmark plan. Both sides tokenize and run the trunk and one zero-shot head
on the same texts. The raw side runs in a loop in this process; the HTTP side is a real
``mts serve`` process driven by an asyncio client with enough requests in flight to saturate
it. The client shares the machine's cores with the server, which the HTTP side pays for.

    .venv/bin/python bench/http_vs_ort.py [--repo model-repo] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from tokenizers import Tokenizer

from service.sessions import HeadSession, TrunkSession
from spec.repository import ModelRepository

TEXTS = [
    "The central bank raised interest rates by half a point on Thursday.",
    "What a brilliant match, the striker scored twice in the final minutes!",
    "I am not sure this phone was worth the money.",
    "Parliament votes on the new climate bill next week.",
]
TASK = "topic-zs"


def raw_throughput(repo: ModelRepository, batch: int, seconds: float) -> float:
    # The service's own session wrappers: same options, no HTTP, no batcher.
    spec = repo.read_trunk_spec()
    trunk = TrunkSession(repo.trunk_model_path)
    stored = repo.read_head(TASK)
    head = HeadSession(stored.model_path.read_bytes(), stored.spec.output_name, spec.hidden_size)
    tokenizer = Tokenizer.from_file(str(repo.tokenizer_path))
    tokenizer.enable_truncation(max_length=spec.max_length)
    tokenizer.enable_padding()
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    tap = f"tap_{stored.spec.branch_layer}"
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        enc = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = trunk.run(feeds, [tap])[tap]
        logits = head.run(hidden, mask)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        _ = exp / exp.sum(-1, keepdims=True)
        done += batch
    return done / seconds


async def http_throughput(url: str, batch: int, seconds: float, concurrency: int) -> float:
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    body = {"inputs": texts if batch > 1 else texts[0]}
    done = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                r = await client.post(f"/predict/{TASK}", json=body)
                r.raise_for_status()
                done += batch

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    if not args.repo.exists():
        subprocess.run(
            [sys.executable, "-m", "mts", "build", "--no-train", "--repo", str(args.repo)],
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
                http = asyncio.run(http_throughput(url, batch, args.seconds, concurrency))
            print(
                f"| {batch} | {limit} | {raw:.0f} | {http:.0f} ({concurrency}) | "
                f"{http / raw:.2f}x | >= {target:.2f}x |"
            )


@contextlib.contextmanager
def serving(repo: Path, batch_limit: int) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MTS_LOG_LEVEL": "warning", "MTS_BATCH_MAX_TEXTS": str(batch_limit)}
    server = subprocess.Popen(
        [sys.executable, "-m", "mts", "serve", "--repo", str(repo), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
