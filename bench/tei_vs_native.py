"""Latency of the compatible routes against the native route, same load, interleaved rounds.

One ``mts serve``; per round, the same closed-loop load (``--in-flight`` requests outstanding,
``--texts`` texts each, the same texts) is sent for ``--seconds`` to each route in turn: the
native ``/predict/<task>``, TEI's ``/tei/<task>`` (root) and, for the embedding task, OpenAI's
``/v1/embeddings``. Rounds interleave the routes so drift (thermal, other load) hits each alike.
Writes per route and task the median over rounds of p50/p99 latency and throughput, and each
compatible route's ratio to the native one::

    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.tei_vs_native [--repo model-repo]

Without ``--repo`` it builds a repository from the tests' tiny random encoder (torch needed):
then the figures weigh the routes' own cost (parsing, shaping, JSON) against a very cheap
inference, the case where a route's overhead shows most.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loadgen import Request, measure
from bench.process import serving

TEXTS = [
    "john scored a great goal in the final",
    "the bank rates fell and the market was bad",
    "i love this phone",
    "shares fell after the results.",
]


def routes(task: str, kind: str, texts: list[str]) -> dict[str, Request]:
    n = len(texts)
    out: dict[str, Request] = {
        "native": (f"/predict/{task}", {"inputs": texts}, n),
        "tei": (f"/tei/{task}", {"inputs": texts, "normalize": False}, n),
    }
    if kind == "embedding":
        out["openai"] = ("/v1/embeddings", {"model": task, "input": texts}, n)
    return out


def constant(request: Request) -> Callable[[int], Request]:
    return lambda _: request


def tiny_repo(root: Path) -> Path:
    from multitask_serve.export.build import build_repository
    from multitask_serve.export.encoder import load_encoder
    from tests.conftest import TOPIC_LABELS
    from tests.factories import write_tiny_encoder

    encoder = load_encoder(write_tiny_encoder(root / "encoder", seed=0))
    build_repository(root / "repo", encoder, {"topic-zs": TOPIC_LABELS}, report=lambda _: None)
    return root / "repo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tei-vs-native.json"))
    args = parser.parse_args()
    texts = (TEXTS * args.texts)[: args.texts]
    tasks = {"embed": "embedding", "topic-zs": "zero-shot"}
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo or tiny_repo(Path(tmp))
        samples: dict[str, dict[str, list[dict[str, float]]]] = {t: {} for t in tasks}
        with serving(repo, Path(tmp) / "server.log", {"MTS_INTRA_OP_THREADS": "1"}) as url:
            for task, kind in tasks.items():  # warm-up, not recorded
                for request in routes(task, kind, texts).values():
                    measure(url, constant(request), 1.0, args.in_flight)
            for _ in range(args.rounds):
                for task, kind in tasks.items():
                    for name, request in routes(task, kind, texts).items():
                        run = measure(url, constant(request), args.seconds, args.in_flight)
                        samples[task].setdefault(name, []).append(
                            {
                                "p50_ms": run.percentile_ms(50),
                                "p99_ms": run.percentile_ms(99),
                                "requests_per_s": run.requests_per_s,
                            }
                        )
    result: dict[str, Any] = {
        "repo": str(args.repo) if args.repo else "tiny random encoder (tests/factories.py)",
        "in_flight": args.in_flight,
        "texts_per_request": args.texts,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "tasks": {},
    }
    for task, by_route in samples.items():
        medians = {
            name: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
            for name, runs in by_route.items()
        }
        result["tasks"][task] = {
            name: {
                **figures,
                "p50_vs_native": figures["p50_ms"] / medians["native"]["p50_ms"],
                "throughput_vs_native": figures["requests_per_s"]
                / medians["native"]["requests_per_s"],
                "p50_ms_per_round": [s["p50_ms"] for s in by_route[name]],
            }
            for name, figures in medians.items()
        }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["tasks"], indent=1))


if __name__ == "__main__":
    main()
