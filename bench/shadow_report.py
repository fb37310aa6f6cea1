"""A real shadow run: a candidate archive shadows the served head over a dataset's test texts.

One ``mts serve`` on a copy of ``--repo``; the candidate is uploaded to
``POST /admin/heads/<task>/shadow``, the test split of ``--data`` (the split ``mts train`` tests
on, same seed) is sent to ``/predict/<task>`` in requests of ``--texts`` texts, and the shadow's
report (``GET /admin/heads/<task>/shadow``) is written with both heads' recorded test metrics.
Each request waits until the shadow has compared the previous one, so that every text is
compared (under load the shadow skips batches instead; bench/shadow_cost.py counts those)::

    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.shadow_report --repo model-repo \\
        --candidate sentiment-top-1-seed0.tar.gz --data sentiment

Needs the train extra (the dataset loader); the server itself runs as it is deployed.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx

from multitask_serve.modelrepo.archive import unpack_head_file
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.training.data import load_dataset
from support.results import write_results
from support.servers import serving_copy

TOKEN = "shadow-report-token"


def wait_compared(admin: httpx.Client, path: str, sent: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report: dict[str, Any] = admin.get(path).json()
        done = report["texts_seen"] + report["texts_skipped"] + report["texts_failed"]
        if done >= sent or time.monotonic() > deadline:
            return report
        time.sleep(0.01)


def summary(spec: Any, version: int) -> dict[str, Any]:
    training = spec.training
    return {
        "version": version,
        "strategy": training.get("strategy"),
        "branch_layer": spec.branch_layer,
        "test_metrics": training.get("test"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"), help="copied, not changed")
    parser.add_argument("--candidate", type=Path, required=True, help="the candidate's archive")
    parser.add_argument("--data", default="sentiment", help="dataset whose test texts are sent")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (mts train --seed)")
    parser.add_argument("--texts", type=int, default=8, help="texts per request")
    parser.add_argument("--max-eval", type=int, help="the first N test texts (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/shadow-report.json"))
    args = parser.parse_args()
    archive = args.candidate.read_bytes()
    spec, _ = unpack_head_file(io.BytesIO(archive), 1 << 30)
    task = spec.task
    test = load_dataset(args.data, args.seed).test[: args.max_eval]
    texts, gold = [e.text for e in test], [e.label for e in test]
    predicted: list[str] = []
    served = ModelRepository(args.repo).read_head(task)
    with serving_copy(args.repo, TOKEN, prefix="shadow-report-") as (_, admin):
        path = f"/admin/heads/{task}/shadow"
        admin.post(path, content=archive).raise_for_status()
        started = time.perf_counter()
        for i in range(0, len(texts), args.texts):
            r = admin.post(f"/predict/{task}", json={"inputs": texts[i : i + args.texts]})
            r.raise_for_status()
            predicted += [o["label"] for o in r.json()["outputs"]]
            report = wait_compared(admin, path, min(i + args.texts, len(texts)))
        seconds = time.perf_counter() - started
    result = {
        "what": __doc__.split("\n")[0],
        "task": task,
        "data": f"{args.data} test split (seed {args.seed}): {len(texts)} texts",
        "texts_per_request": args.texts,
        "seconds": round(seconds, 1),
        "served": {
            **summary(served.spec, served.version),
            "accuracy_on_these_texts": sum(p == g for p, g in zip(predicted, gold, strict=True))
            / len(gold),
        },
        "candidate": summary(spec, report["candidate_version"]),
        "report": report,
    }
    write_results(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
