"""What a shadow candidate costs the served traffic: none vs a top-2 vs a head-only candidate.

One ``mts serve`` on a copy of ``--repo``; per round, for each condition in turn, the task's
shadow is set (``POST /admin/heads/<task>/shadow?replace=true`` with the condition's archive) or
discarded, then the same closed-loop load (``--in-flight`` requests outstanding, ``--texts``
texts each) is sent to ``/predict/<task>`` for ``--seconds``. Rounds interleave the conditions so
drift (other load on the machine) hits each alike. Writes per condition the median over rounds of
throughput and p50/p99 latency with their spread (min, max), the ratio to no shadow, and how many
texts the shadow compared and skipped (a skipped text costs nothing, so the share matters)::

    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.shadow_cost --repo model-repo \\
        --top2 sentiment-top-2.tar.gz --head-only sentiment-head-only-seed0.tar.gz

Without ``--top2`` the served version's own archive is the top-2 candidate (the default
sentiment head is top-2): a candidate as costly as the served head.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import onnxruntime

from bench.loadgen import Request, measure
from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.repository import ModelRepository
from support.results import write_results
from support.servers import serving_copy
from support.stats import summary

TOKEN = "shadow-cost-token"
TEXTS = [
    "@united your customer service is the worst, two hours on hold",
    "just landed in paris, the weather is lovely",
    "the new update broke my phone again",
    "watching the game tonight with friends",
    "i can't believe how good this album is",
    "meeting moved to 3pm tomorrow",
    "worst commute ever, trains cancelled again",
    "thanks for the quick reply!",
]


def served_archive(repo: Path, task: str) -> bytes:
    stored = ModelRepository(repo).read_head(task)
    return pack_head(stored.spec, stored.model_path.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"), help="copied, not changed")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--top2", type=Path, help="top-2 candidate archive (default: served)")
    parser.add_argument("--head-only", type=Path, required=True, help="head-only candidate")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--threads", default="0", help="MTS_INTRA_OP_THREADS (0: every core)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/shadow-cost.json"))
    args = parser.parse_args()
    texts = (TEXTS * args.texts)[: args.texts]
    request: Request = (f"/predict/{args.task}", {"inputs": texts}, len(texts))
    archives = {
        "none": None,
        "top-2 shadow": args.top2.read_bytes()
        if args.top2
        else served_archive(args.repo, args.task),
        "head-only shadow": args.head_only.read_bytes(),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in archives}
    env = {"MTS_INTRA_OP_THREADS": args.threads}
    with serving_copy(args.repo, TOKEN, env, prefix="shadow-cost-") as (url, admin):
        shadow = f"/admin/heads/{args.task}/shadow"
        candidates = {}
        for round_ in range(args.rounds + 1):  # round 0 warms every condition up
            for name, archive in archives.items():
                if archive is None:
                    admin.delete(shadow)  # 404 when none is set
                else:
                    r = admin.post(f"{shadow}?replace=true", content=archive)
                    r.raise_for_status()
                    candidates[name] = {k: r.json()[k] for k in ("version", "kind", "branch_layer")}
                run = measure(url, lambda _: request, args.seconds, args.in_flight)
                report = admin.get(shadow).json() if archive is not None else {}
                if round_ == 0:
                    continue
                samples[name].append(
                    {
                        "texts_per_s": run.texts_per_s,
                        "p50_ms": run.percentile_ms(50),
                        "p99_ms": run.percentile_ms(99),
                        "shadow_texts_compared": report.get("texts_seen", 0),
                        "shadow_texts_skipped": report.get("texts_skipped", 0),
                        "served_head_ms_per_batch": (
                            report.get("latency_ms_per_batch", {}).get("served")
                        ),
                        "candidate_ms_per_batch": (
                            report.get("latency_ms_per_batch", {}).get("candidate")
                        ),
                    }
                )
    base = {k: statistics.median(s[k] for s in samples["none"]) for k in ("texts_per_s", "p99_ms")}
    conditions: dict[str, Any] = {}
    for name, runs in samples.items():
        compared = sum(s["shadow_texts_compared"] for s in runs)
        skipped = sum(s["shadow_texts_skipped"] for s in runs)
        figures: dict[str, Any] = {
            key: summary([s[key] for s in runs]) for key in ("texts_per_s", "p50_ms", "p99_ms")
        }
        figures["throughput_vs_none"] = figures["texts_per_s"]["median"] / base["texts_per_s"]
        figures["p99_vs_none"] = figures["p99_ms"]["median"] / base["p99_ms"]
        if name != "none":
            figures["candidate"] = candidates[name]
            figures["shadow_texts_compared"] = compared
            figures["shadow_texts_skipped"] = skipped
            figures["shadow_skipped_share"] = skipped / (compared + skipped) if compared else None
            for key in ("served_head_ms_per_batch", "candidate_ms_per_batch"):
                figures[key] = statistics.median(s[key] for s in runs if s[key] is not None)
        conditions[name] = figures
    result = {
        "what": __doc__.split("\n")[0],
        "repo": args.repo.name,
        "task": args.task,
        "load": {
            "in_flight": args.in_flight,
            "texts_per_request": args.texts,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "interleaved": True,
            "intra_op_threads": args.threads,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "conditions": conditions,
    }
    write_results(args.out, result)
    print(json.dumps(conditions, indent=1))


if __name__ == "__main__":
    main()
