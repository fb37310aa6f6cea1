"""Latency of single-text requests at concurrency 1, 8 and 64, against raw ORT at batch 1.

Comparison 5 of the benchmark plan. A real ``mts serve`` process on a copy of a built repository,
single-text ``POST /predict/<task>`` requests from the closed-loop client (bench/loadgen.py, on
the same cores as the server), default batching. Before the HTTP measurements at concurrency 1,
the same trunk and head run the same texts in this process at batch 1 (tokenization included,
bench/http_vs_ort.py's raw side), and the p50 difference is set against the target: within 1 ms.
At concurrency 1 the server's own histograms (``/metrics``, read before and after) split each
request's time into the part inside the batcher (queue, hand-off to the inference thread,
tokenization, trunk, head) and the rest (HTTP, routing, JSON, the client). ``--profile DIR``
records py-spy on the server during each HTTP measurement and prints where its time goes.

    .venv/bin/python -m bench.latency [--repo model-repo] [--task topic-zs] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench import spy
from bench.http_vs_ort import TEXTS, RawPipeline
from bench.loadgen import Run, measure
from multitask_serve.modelrepo.repository import ModelRepository
from support.servers import cpu_seconds, free_port, mts_serve, server

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


# Server-side time per request at concurrency 1: histogram sums (seconds) from /metrics.
BATCHER = "inside the batcher (submit to result)"
STAGES = {
    BATCHER: ("mts_request_duration_seconds_sum", None),
    "  queue wait": ("mts_queue_wait_duration_seconds_sum", None),
    "  tokenization": ("mts_stage_duration_seconds_sum", "tokenize"),
    "  trunk": ("mts_stage_duration_seconds_sum", "trunk"),
    "  head and post-processing": ("mts_head_duration_seconds_sum", None),
}


def histogram_sums(url: str) -> dict[str, float]:
    sums = dict.fromkeys(STAGES, 0.0)
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            for stage, (name, label) in STAGES.items():
                if sample.name == name and (label is None or sample.labels.get("stage") == label):
                    sums[stage] += sample.value
    return sums


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--task", default="topic-zs")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--profile", type=Path, help="folder for py-spy profiles of the server")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"  # the server may write (sweep, versions): never the original
        shutil.copytree(args.repo, repo)
        raw = raw_latencies(ModelRepository(repo), args.task, args.seconds)
        port = free_port()
        env = {"MTS_LOG_LEVEL": "warning", "MTS_REPOSITORY_POLL_SECONDS": "0"}
        runs: dict[int, Run] = {}
        splits: dict[int, dict[str, float]] = {}  # ms per request, by part
        server_cores: dict[int, float] = {}  # CPU seconds per second
        with server("mts", mts_serve(repo, port), port, env) as running:

            def load(i: int) -> tuple[str, dict[str, str], int]:
                return f"/predict/{args.task}", {"inputs": TEXTS[i % len(TEXTS)]}, 1

            measure(running.url, load, 2.0, 8)  # warm-up
            # The floor of any request here: client, HTTP and routing, no inference.
            floor = measure(running.url, lambda _: ("/healthz", None, 0), args.seconds, 1)
            for concurrency in CONCURRENCY:
                with contextlib.ExitStack() as stack:
                    if args.profile:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        out = args.profile / f"latency-c{concurrency}.txt"
                        stack.enter_context(spy.record(running.pid, out, args.seconds))
                    before, server_cpu = histogram_sums(running.url), cpu_seconds(running.pid)
                    runs[concurrency] = measure(running.url, load, args.seconds, concurrency)
                    server_cores[concurrency] = (cpu_seconds(running.pid) - server_cpu) / runs[
                        concurrency
                    ].seconds
                    after = histogram_sums(running.url)
                    served = len(runs[concurrency].latencies)
                    splits[concurrency] = {
                        k: (after[k] - before[k]) / served * 1000 for k in STAGES
                    }

    raw_p50 = float(np.percentile(raw, 50)) * 1000
    print(f"task {args.task}, single-text requests, {args.seconds:.0f} s per measurement\n")
    print(
        "| side | concurrency | p50 ms | p90 ms | p99 ms | requests/s "
        "| server: mean ms in the batcher (queue wait) | cores used: server, client |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| raw ORT in-process, batch 1 | 1 | {raw_p50:.2f} | {np.percentile(raw, 90) * 1000:.2f}"
        f" | {np.percentile(raw, 99) * 1000:.2f} | {len(raw) / args.seconds:.0f} | | |"
    )
    print(
        f"| HTTP `GET /healthz` (no inference) | 1 | {floor.percentile_ms(50):.2f} | "
        f"{floor.percentile_ms(90):.2f} | {floor.percentile_ms(99):.2f} | "
        f"{floor.requests_per_s:.0f} | | |"
    )
    for concurrency, run in runs.items():
        inside = splits[concurrency]
        print(
            f"| HTTP (`mts serve`) | {concurrency} | {run.percentile_ms(50):.2f} | "
            f"{run.percentile_ms(90):.2f} | {run.percentile_ms(99):.2f} | "
            f"{run.requests_per_s:.0f} | {inside[BATCHER]:.2f} ({inside['  queue wait']:.2f}) | "
            f"{server_cores[concurrency]:.2f}, {run.client_cpu_s / run.seconds:.2f} |"
        )
    gap = runs[1].percentile_ms(50) - raw_p50
    verdict = "met" if gap <= TARGET_MS else "missed"
    print(
        f"\nconcurrency 1: HTTP p50 - raw p50 = {gap:.2f} ms "
        f"(target <= {TARGET_MS:.0f} ms): {verdict}"
    )
    print("\nconcurrency 1, server-side time per request (from its /metrics histograms)\n")
    print("| part | ms per request |")
    print("|---|---|")
    for stage, ms in splits[1].items():
        print(f"| {stage} | {ms:.2f} |")
    outside = runs[1].percentile_ms(50) - splits[1][BATCHER]
    print(
        f"| outside the batcher: HTTP, routing, JSON, client | {outside:.2f} (p50 - mean above) |"
    )
    print(f"| raw ORT in-process, whole call | {raw_p50:.2f} (p50) |")
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
