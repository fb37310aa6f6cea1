"""Latency of single-text requests at concurrency 1, 8 and 64, against raw ORT at batch 1.

Comparison 5 of the benchmark plan. A real ``mts serve`` process on a copy of a built repository,
single-text ``POST /predict/<task>`` requests from the closed-loop client (bench/loadgen.py, on
the same cores as the server), default batching. Before the HTTP measurements at concurrency 1,
the same trunk and head run the same texts in this process at batch 1 (tokenization included,
bench/http_vs_ort.py's raw side), and the p50 difference is set against the target: within 1 ms.
``--profile DIR`` records py-spy on the server during each HTTP measurement and prints where its
time goes.

    .venv/bin/python bench/latency.py [--repo /work/model-repo] [--task topic-zs] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import spy
from http_vs_ort import TEXTS, RawPipeline
from loadgen import Run, free_port, measure, server

from spec.repository import ModelRepository

CONCURRENCY = (1, 8, 64)
TARGET_MS = 1.0


def raw_latencies(repo: ModelRepository, task: str, seconds: float) -> list[float]:
    pipeline = RawPipeline(repo, task)
    for text in TEXTS:  # warm-up: first runs allocate
        pipeline([text])
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        pipeline([TEXTS[len(latencies) % len(TEXTS)]])
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("/work/model-repo"))
    p.add_argument("--task", default="topic-zs")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--profile", type=Path, help="folder for py-spy profiles of the server")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"  # the server may write (sweep, versions): never the original
        shutil.copytree(args.repo, repo)
        raw = raw_latencies(ModelRepository(repo), args.task, args.seconds)
        port = free_port()
        env = {**os.environ, "MTS_LOG_LEVEL": "warning", "MTS_REPOSITORY_POLL_SECONDS": "0"}
        command = [sys.executable, "-m", "mts", "serve", "--repo", str(repo), "--port", str(port)]
        runs: dict[int, Run] = {}
        with server("mts", command, port, env) as running:

            def load(i: int) -> tuple[str, dict[str, str], int]:
                return f"/predict/{args.task}", {"inputs": TEXTS[i % len(TEXTS)]}, 1

            measure(running.url, load, 2.0, 8)  # warm-up
            for concurrency in CONCURRENCY:
                with contextlib.ExitStack() as stack:
                    if args.profile:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        out = args.profile / f"latency-c{concurrency}.txt"
                        stack.enter_context(spy.record(running.pid, out, args.seconds))
                    runs[concurrency] = measure(running.url, load, args.seconds, concurrency)

    raw_p50 = float(np.percentile(raw, 50)) * 1000
    print(f"task {args.task}, single-text requests, {args.seconds:.0f} s per measurement\n")
    print("| side | concurrency | p50 ms | p90 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|")
    print(
        f"| raw ORT in-process, batch 1 | 1 | {raw_p50:.2f} | {np.percentile(raw, 90) * 1000:.2f}"
        f" | {np.percentile(raw, 99) * 1000:.2f} | {len(raw) / args.seconds:.0f} |"
    )
    for concurrency, run in runs.items():
        print(
            f"| HTTP (`mts serve`) | {concurrency} | {run.percentile_ms(50):.2f} | "
            f"{run.percentile_ms(90):.2f} | {run.percentile_ms(99):.2f} | "
            f"{run.requests_per_s:.0f} |"
        )
    gap = runs[1].percentile_ms(50) - raw_p50
    verdict = "met" if gap <= TARGET_MS else "missed"
    print(
        f"\nconcurrency 1: HTTP p50 - raw p50 = {gap:.2f} ms "
        f"(target <= {TARGET_MS:.0f} ms): {verdict}"
    )
    if args.profile:
        for concurrency in CONCURRENCY:
            print(f"\nserver profile at concurrency {concurrency} (share of samples)\n")
            print("| function | inclusive | self |")
            print("|---|---|---|")
            for function, inclusive, own in spy.summary(
                args.profile / f"latency-c{concurrency}.txt", top=20
            ):
                print(f"| `{function}` | {inclusive:.0%} | {own:.0%} |")


if __name__ == "__main__":
    main()
