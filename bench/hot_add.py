"""Other tasks' latency while heads are hot-added, replaced and removed over the admin API.

Comparison 6 of the benchmark plan. A real ``mts serve`` process on a copy of a built repository
takes a fixed closed-loop load (bench/loadgen.py, on the same cores as the server): single-text
requests for the tasks already served, in turn. First the load alone (steady state), then the
same load for the same time while a second client loops over the admin API: a zero-shot head
(``POST /admin/heads/hot-zs/zero-shot``, replace), the repository's trained top-2 sentiment head
renamed and uploaded as an archive (``POST /admin/heads/hot-top2?replace=true``), then both
removed. Prints both phases' p50/p99, the p99 ratio against the target (<= 1.5x), the adds done,
and every non-2xx answer. ``--profile DIR`` records py-spy on the server during the add phase.

    .venv/bin/python -m bench.hot_add [--repo model-repo] [--seconds 20] [--in-flight 8]
        [--rounds 3] [--out bench/results/hot-add.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import spy
from bench.http_vs_ort import TEXTS
from bench.loadgen import Run, measure
from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.repository import ModelRepository
from support.results import write_results
from support.servers import free_port, mts_serve, server
from support.stats import summary

TOKEN = "bench-admin-token"
LOAD_TASKS = ("topic", "sentiment", "topic-zs")
TARGET = 1.5
LABELS = {
    "business": "business, companies and markets",
    "sport": "sport, football and matches",
    "tech": "technology, phones and software",
}


class Churn:
    """Adds, replaces and removes heads in a loop on its own thread until stopped."""

    def __init__(self, url: str, archive: bytes) -> None:
        self._url, self._archive = url, archive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn")
        self.adds = 0
        self.failures: Counter[str] = Counter()

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _call(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> None:
        r = client.request(method, path, **kwargs)
        if r.status_code // 100 != 2:
            self.failures[f"{method} {path.split('?')[0]}: {r.status_code}"] += 1
        elif method == "POST":
            self.adds += 1

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=self._url, headers=headers, timeout=120) as client:
            while not self._stop.is_set():
                self._call(
                    client,
                    "POST",
                    "/admin/heads/hot-zs/zero-shot",
                    json={"labels": LABELS, "replace": True},
                )
                for _ in range(2):  # an add, then a replace of the head just added
                    self._call(
                        client,
                        "POST",
                        "/admin/heads/hot-top2?replace=true",
                        content=self._archive,
                        headers={"Content-Type": "application/gzip"},
                    )
                for task in ("hot-zs", "hot-top2"):
                    self._call(client, "DELETE", f"/admin/heads/{task}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--in-flight", type=int, default=8)
    p.add_argument("--profile", type=Path, help="folder for a py-spy profile of the add phase")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    p.add_argument("--rounds", type=int, default=3, help="steady then adding, this many times")
    p.add_argument("--out", type=Path, default=Path("bench/results/hot-add.json"))
    args = p.parse_args()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"  # the admin API writes versions: never the original
        shutil.copytree(args.repo, repo)
        stored = ModelRepository(repo).read_head("sentiment")
        spec = dataclasses.replace(stored.spec, task="hot-top2")
        archive = pack_head(spec, stored.model_path.read_bytes())
        port = free_port()
        env = {
            "MTS_LOG_LEVEL": "warning",
            "MTS_ADMIN_TOKEN": TOKEN,
            "MTS_REPOSITORY_POLL_SECONDS": "0",
            **dict(kv.split("=", 1) for kv in args.env),
        }

        def load(i: int) -> tuple[str, dict[str, str], int]:
            task = LOAD_TASKS[i % len(LOAD_TASKS)]
            return f"/predict/{task}", {"inputs": TEXTS[(i // len(LOAD_TASKS)) % len(TEXTS)]}, 1

        rounds: list[dict[str, Any]] = []
        with server("mts", mts_serve(repo, port), port, env) as running:
            measure(running.url, load, 2.0, args.in_flight)  # warm-up
            for r in range(args.rounds):
                steady = measure(running.url, load, args.seconds, args.in_flight, strict=False)
                with contextlib.ExitStack() as stack:
                    if args.profile and r == 0:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        out = args.profile / "hot-add.txt"
                        stack.enter_context(spy.record(running.pid, out, args.seconds))
                    churn = stack.enter_context(Churn(running.url, archive))
                    adding = measure(running.url, load, args.seconds, args.in_flight, strict=False)
                rounds.append(
                    {
                        "steady": figures(steady),
                        "adding": figures(adding),
                        "p99_ratio": adding.percentile_ms(99) / steady.percentile_ms(99),
                        "p50_ratio": adding.percentile_ms(50) / steady.percentile_ms(50),
                        "adds_and_replaces": churn.adds,
                        "admin_non_2xx": dict(churn.failures),
                    }
                )
                print(f"round {r + 1}: {rounds[-1]}", file=sys.stderr)

    ratios = [r["p99_ratio"] for r in rounds]
    results = {
        "load": f"single-text requests for {', '.join(LOAD_TASKS)} in turn, {args.in_flight} in "
        f"flight, {args.seconds:g} s per phase, {args.rounds} rounds of steady then adding",
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "target_p99_ratio": TARGET,
        "p99_ratio": summary(ratios),
        "met": statistics.median(ratios) <= TARGET,
        "rounds": rounds,
    }
    write_results(args.out, results)
    print("| round | steady p50 / p99 ms | adding p50 / p99 ms | p99 ratio | adds | non-2xx |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        s, a = r["steady"], r["adding"]
        failures = s["non_2xx"] + a["non_2xx"] + sum(r["admin_non_2xx"].values())
        print(
            f"| {i} | {s['p50_ms']:.1f} / {s['p99_ms']:.1f} | {a['p50_ms']:.1f} / "
            f"{a['p99_ms']:.1f} | {r['p99_ratio']:.2f}x | {r['adds_and_replaces']} | {failures} |"
        )
    print(
        f"\np99 while adding / steady p99: median {results['p99_ratio']['median']:.2f}x "
        f"(target <= {TARGET}x): {'met' if results['met'] else 'missed'}; written to {args.out}"
    )


def figures(run: Run) -> dict[str, float]:
    return {
        "requests": len(run.latencies),
        "p50_ms": run.percentile_ms(50),
        "p99_ms": run.percentile_ms(99),
        "requests_per_s": run.requests_per_s,
        "non_2xx": sum(run.failures.values()),
    }


if __name__ == "__main__":
    main()
