"""Three Hugging Face pipelines in one FastAPI process vs ours, the same three tasks, over HTTP.

Comparison 2 of the benchmark plan. The baseline is bench/baseline_app.py: sentiment, topic and
NER as three ``transformers`` pipelines, each its own full PyTorch copy of all-MiniLM-L6-v2.
Ours is ``mts serve`` on a copy of a built repository reduced to the same three trained heads
(sentiment top-2, topic head-only, NER top-2). The two servers run one after the other, never
at once, under the same closed-loop client (bench/loadgen.py) and the same real texts: tweets
and BBC news sentences from the shipped datasets. Two loads:

- all tasks: every text needs all three (``POST /predict`` with the three tasks);
- mixed: each request asks one task, the three in turn (``POST /predict/<task>``).

Resident memory (VmRSS) of each server is read after a warm-up and at the end; VmHWM is its peak.

    .venv/bin/python -m bench.pipelines_vs_ours [--repo model-repo] [--seconds 15] [--in-flight 16]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import spy
from bench.baseline_app import TASKS, baseline_serve, prepare_models
from bench.loadgen import Request, closed_loop
from multitask_serve.export.encoder import default_encoder_path
from multitask_serve.export.quantize import INT8, quantize_trunk
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import HeadSpec
from multitask_serve.training.data import read_ner, read_sentiment, read_topic
from support.servers import Server, free_port, memory_mb, mts_serve, server

TARGETS = {"all tasks": 5.0, "mixed": 3.0}
MEMORY_TARGET = 1 / 3


def real_texts(n: int, seed: int = 0) -> list[str]:
    """Tweets (sentiment and NER corpora) and the first sentence of BBC news articles."""
    tweets = [e.text for e in read_sentiment()[0]]
    ner = [" ".join(e.tokens) for e in read_ner()[0]]
    news = []
    for example in read_topic()[0]:
        lines = [line for line in example.text.splitlines() if line.strip()]
        news.append(lines[1].split(". ")[0].strip() + "." if len(lines) > 1 else lines[0])
    rng = random.Random(seed)
    texts = (
        rng.sample(tweets, n // 3) + rng.sample(ner, n // 3) + rng.sample(news, n - 2 * (n // 3))
    )
    rng.shuffle(texts)
    return texts


def three_heads(source: Path, work: Path, int8: bool = True) -> tuple[Path, dict[str, HeadSpec]]:
    """A copy of repository ``source`` under ``work`` holding only the three trained heads (and,
    with ``int8``, the int8 trunk variant); returns its path and the heads' specs."""
    repo = work / "repo"
    shutil.copytree(source, repo)
    stored = ModelRepository(repo)
    for task in stored.tasks():
        if task not in TASKS:
            stored.remove_task(task)
    if int8 and INT8 not in stored.read_trunk_spec().variants:
        quantize_trunk(stored)
    return repo, {task: stored.read_head(task).spec for task in TASKS}


def make_loads(texts: list[str], per_request: int) -> dict[str, Callable[[int], Request]]:
    def chunk(i: int) -> list[str] | str:
        start = (i * per_request) % len(texts)
        chosen = (texts + texts)[start : start + per_request]
        return chosen[0] if per_request == 1 else chosen

    def all_tasks(i: int) -> Request:
        return "/predict", {"inputs": chunk(i), "tasks": list(TASKS)}, per_request

    def mixed(i: int) -> Request:
        return f"/predict/{TASKS[i % len(TASKS)]}", {"inputs": chunk(i)}, per_request

    return {"all tasks": all_tasks, "mixed": mixed}


def measure(
    side: Server,
    texts: list[str],
    sizes: list[int],
    seconds: float,
    in_flight: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    # Warm-up: every task and request size, a couple of seconds each.
    for size in sizes:
        for load in make_loads(texts, size).values():
            closed_loop(side.url, load, 2.0, in_flight)
    figures: dict[str, Any] = {"warm": memory_mb(side.pid)}
    for size in sizes:
        for name, load in make_loads(texts, size).items():
            key = f"{name} {size}"
            with contextlib.ExitStack() as stack:
                if profile:
                    raw = profile / f"{side.name}, {key}.txt"
                    stack.enter_context(spy.record(side.pid, raw, seconds))
                figures[key] = closed_loop(side.url, load, seconds, in_flight)
            print(f"  {key} texts per request: {figures[key]:.1f} texts/s", file=sys.stderr)
    figures["end"] = memory_mb(side.pid)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--repo",
        type=Path,
        default=Path("model-repo"),
        help="a built repository with the trained sentiment, topic and ner heads",
    )
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--in-flight", type=int, default=16)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="texts per request")
    p.add_argument("--texts", type=int, default=600)
    p.add_argument(
        "--profile",
        type=Path,
        help="record every measurement's server with py-spy into this folder",
    )
    args = p.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    texts = real_texts(args.texts)
    env = {"HF_HUB_OFFLINE": "1", "MTS_LOG_LEVEL": "warning"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, heads = three_heads(args.repo, work)
        models = work / "models"
        prepare_models(models, {t: h.labels for t, h in heads.items()}, default_encoder_path())
        sides: dict[str, tuple[Callable[[int], list[str]], dict[str, str]]] = {
            "pipelines": (partial(baseline_serve, models), {}),
            "ours": (partial(mts_serve, repo), {}),
            "ours int8": (partial(mts_serve, repo), {"MTS_TRUNK_PRECISION": INT8}),
        }
        for name, (command, extra) in sides.items():
            port = free_port()
            print(name, file=sys.stderr)
            log = work / f"{name}.log"
            with server(name, command(port), port, env | extra, log=log) as side:
                results[name] = measure(
                    side, texts, args.sizes, args.seconds, args.in_flight, args.profile
                )

    strategies = ", ".join(
        f"{t} {h.training.get('strategy', '?')} (tap {h.branch_layer})" for t, h in heads.items()
    )
    print(
        f"ours: {strategies}; {args.in_flight} requests in flight, {args.seconds:.0f} s each, "
        f"{len(texts)} real texts\n"
    )
    print(
        "| load | texts per request | pipelines texts/s | ours texts/s | ratio | "
        "ours, int8 trunk | ratio | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for load, target in TARGETS.items():
            b, o, q = (results[side][f"{load} {size}"] for side in sides)
            print(
                f"| {load} | {size} | {b:.1f} | {o:.1f} | {o / b:.2f}x | {q:.1f} | {q / b:.2f}x "
                f"| >= {target:.0f}x |"
            )
    print(
        "\n| resident memory (MiB) | pipelines | ours | ratio | ours, int8 trunk | ratio | target |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, moment, key in (
        ("after warm-up", "warm", "VmRSS"),
        ("at the end", "end", "VmRSS"),
        ("peak (VmHWM)", "end", "VmHWM"),
    ):
        b, o, q = (results[side][moment][key] for side in sides)
        print(
            f"| {label} | {b:.0f} | {o:.0f} | {o / b:.2f} | {q:.0f} | {q / b:.2f} | "
            f"<= {MEMORY_TARGET:.2f} |"
        )
    if args.profile:
        for raw in sorted(args.profile.glob("*.txt")):
            print(f"\nprofile ({raw.stem}): function | on stack | at the top")
            for function, inclusive, own in spy.summary(raw):
                print(f"  {function} | {100 * inclusive:.0f}% | {100 * own:.0f}%")


if __name__ == "__main__":
    main()
