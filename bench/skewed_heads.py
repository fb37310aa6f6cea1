"""A thousand stored heads, Zipf traffic, a budget of a fifth: what loading on demand costs.

A repository of ``--heads`` tasks is made from a built one (default: ./model-repo): ``--big``
copies of one head with copied layers (``--big-from``: the default build's sentiment head, top-3)
and the rest copies of its classifier-only heads, each under a new name (the graph hard-linked,
head.json naming the copy).
Single-text requests, closed loop at ``--in-flight``, each for a head drawn from a Zipf law
(``--zipf``) over the heads in a seeded random order. Real ``mts serve`` processes, one per
phase, phases interleaved over ``--rounds``:

- ``budget``: every head stored, ``MTS_HEAD_MEMORY_MB`` a fifth of the heads' bytes;
- ``budget-uncompiled``: the same without the replica's compiled heads (``MTS_HEAD_CACHE_MB=0``);
- ``budget-trim-evicted``: the same with freed heap given back by the earlier rule
  (``MTS_HEAP_TRIM=evicted``: per 64 MiB of heap-held heads evicted, not once 32 MiB is free);
- ``all-loaded``: the same traffic with every head loaded (no budget);
- ``hot-3-stored``: only the three most requested heads stored, traffic over those three;
- ``hot-1000-stored``: every head stored (budget as above), traffic over the same three.

Per phase, after ``--warmup`` seconds of the same traffic: texts/s, p50/p99 overall and for the
hottest head, the hit ratio and cold-load p50/p95 (the service's own counters and histogram over
the measured window), RSS (sampled), seconds from start to ready, and the /metrics size. After
the last phase, every copy asked for is checked: it must answer a text exactly as its original.

    .venv/bin/python -m bench.skewed_heads [--repo model-repo] [--heads 1000] [--big 400]
        [--seconds 40] [--warmup 20] [--rounds 2] [--out bench/results/skewed-heads.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.http_vs_ort import TEXTS
from bench.loadgen import Run, measure
from multitask_serve.service.residency import head_bytes
from support.results import write_phases
from support.servers import MTS, Sampler, cpu_seconds, start_server, stop, wait_idle
from support.stats import percentile, summary

MIB = 1 << 20
# ``mts serve`` on some cores only: the affinity is set before any thread starts, so all inherit it
PINNED = (
    "import os, sys; os.sched_setaffinity(0, {cpus}); "
    "from multitask_serve.cli import main; sys.exit(main())"
)
PHASES = (
    "budget",
    "budget-uncompiled",
    "budget-trim-evicted",
    "all-loaded",
    "hot-3-stored",
    "hot-1000-stored",
)


def make_repo(source: Path, dest: Path, heads: int, big: int, big_from: str) -> dict[str, str]:
    """``dest``: ``source``'s trunk and ``heads`` copies of its heads; returns copy -> original."""
    shutil.copytree(source / "trunk", dest / "trunk", copy_function=os.link)
    originals = {}
    for task_dir in sorted((source / "heads").iterdir()):
        current = (task_dir / "current").read_text().strip()
        originals[task_dir.name] = task_dir / current
    graphs = {t: (d / "head.onnx").stat().st_size for t, d in originals.items()}
    large = [big_from]
    small = sorted(t for t in graphs if graphs[t] <= MIB)
    if big_from not in graphs or not small:
        raise SystemExit(f"{source} needs {big_from} and heads without copied layers ({graphs})")
    copies = {}
    for i in range(heads):
        name = f"h{i:04d}"
        original = large[i % len(large)] if i < big else small[i % len(small)]
        version = dest / "heads" / name / "1"
        version.mkdir(parents=True)
        os.link(originals[original] / "head.onnx", version / "head.onnx")
        spec = json.loads((originals[original] / "head.json").read_text())
        spec["task"] = name
        (version / "head.json").write_text(json.dumps(spec))
        (version.parent / "current").write_text("1\n")
        copies[name] = original
    for original in originals:  # the originals too: the copies' answers are checked against them
        shutil.copytree(
            source / "heads" / original, dest / "heads" / original, copy_function=os.link
        )
    return copies


def zipf_order(names: list[str], exponent: float, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    weights = 1.0 / np.arange(1, len(order) + 1) ** exponent
    return order, weights / weights.sum()


def trace(order: list[str], weights: np.ndarray, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [order[i] for i in rng.choice(len(order), n, p=weights)]


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=60).text


def sample_sum(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(v) for lab, v in pattern.findall(text) if labels in (lab or ""))


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    found = re.findall(rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} (\S+)$', text, re.M)
    return [(float(le), float(count)) for le, count in found]


def quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    """``histogram_quantile`` over the window between two scrapes (linear within a bucket)."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    if total == 0:
        return None
    rank, low, below = q * total, 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if le == float("inf"):
                return low
            return low + (le - low) * (rank - below) / max(count - below, 1e-9)
        low, below = le, count
    return low


@contextlib.contextmanager
def phase_server(
    repo: Path, env: dict[str, str], log: Path, cpus: list[int] | None = None
) -> Iterator[tuple[str, int, float]]:
    """``mts serve`` of ``repo``; with ``cpus``, the server (every thread it starts) runs on
    those cores only."""
    started = time.monotonic()
    python = MTS
    if cpus:
        python = ("-c", PINNED.format(cpus=set(cpus)))
    proc, url = start_server(repo, log, env, python=python, timeout=900)
    try:
        yield url, proc.pid, time.monotonic() - started
    finally:
        stop(proc, timeout=120)


def run_phase(
    url: str, pid: int, calls: list[str], hot: str, args: argparse.Namespace
) -> dict[str, Any]:
    def request(i: int) -> tuple[str, dict[str, Any], int]:
        return f"/predict/{calls[i % len(calls)]}", {"inputs": TEXTS[i % len(TEXTS)]}, 1

    measure(url, request, args.warmup, args.in_flight, strict=False)
    wait_idle(pid)
    before = scrape(url)
    sampler = Sampler(pid, 0.5)
    sampler.start()
    cpu = cpu_seconds(pid)
    run: Run = measure(url, request, args.seconds, args.in_flight, strict=False)
    cpu = cpu_seconds(pid) - cpu
    sampler.stop()
    after = scrape(url)
    hits = [sample_sum(t, "mts_head_lookups_total", 'result="hit"') for t in (before, after)]
    misses = [sample_sum(t, "mts_head_lookups_total", 'result="miss"') for t in (before, after)]
    lookups = (hits[1] - hits[0]) + (misses[1] - misses[0])
    compiled = {
        result: sample_sum(after, "mts_head_compiled_lookups_total", f'result="{result}"')
        - sample_sum(before, "mts_head_compiled_lookups_total", f'result="{result}"')
        for result in ("hit", "miss")
    }
    cold = [buckets(t, "mts_head_cold_load_duration_seconds") for t in (before, after)]
    hot_latencies = [s for s, p in zip(run.latencies, run.paths, strict=True) if p.endswith(hot)]
    rss = [mib for _, mib in sampler.samples]
    return {
        "texts_per_s": run.texts_per_s,
        # the server's CPU seconds per second measured (2.0: both cores busy)
        "server_cores_busy": cpu / args.seconds,
        "server_cpu_ms_per_text": 1e3 * cpu / (run.texts_per_s * args.seconds),
        "p50_ms": run.percentile_ms(50),
        "p99_ms": run.percentile_ms(99),
        "hot_p99_ms": _ms(percentile(hot_latencies, 99)) if hot_latencies else None,
        "failures": dict(run.failures),
        "hit_ratio": (hits[1] - hits[0]) / lookups if lookups else None,
        # loads of heads large enough to compile that found them compiled (service/compiled.py)
        "compiled_hit_ratio": compiled["hit"] / sum(compiled.values())
        if sum(compiled.values())
        else None,
        "cold_loads": sample_sum(after, "mts_head_cold_load_duration_seconds_count")
        - sample_sum(before, "mts_head_cold_load_duration_seconds_count"),
        "cold_load_p50_ms": _ms(quantile(cold[0], cold[1], 0.5)),
        "cold_load_p95_ms": _ms(quantile(cold[0], cold[1], 0.95)),
        "rss_median_mib": float(np.median(rss)),
        "rss_max_mib": max(rss),
        "loaded_heads": sample_sum(after, "mts_heads_loaded"),
        "loaded_mib": sample_sum(after, "mts_head_loaded_bytes") / MIB,
        "metrics_kib": len(after.encode()) / 1024,
    }


def poll_costs(repo: Path, budget_mb: float, rounds: int = 5) -> dict[str, Any]:
    """A replica's start (in process: ``create_app``) and one repository poll that finds nothing
    changed, every task's pointers read (what each poll did before) against the folder scan
    (``changed_since``, what each poll does now), interleaved."""
    from prometheus_client import CollectorRegistry

    from multitask_serve.service.app import create_app
    from multitask_serve.service.settings import Settings

    started = time.perf_counter()
    app = create_app(Settings(repository=repo, head_memory_mb=budget_mb), CollectorRegistry())
    start_s = time.perf_counter() - started
    services = app.state.services
    time.sleep(2.5)  # past the racy window: the scan trusts every folder's mtime
    seen, _ = services.registry.repo.changed_since({})
    full, scan = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        services.registry.sync()
        services.shadows.sync()
        full.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        _, changed = services.registry.repo.changed_since(seen)
        services.registry.sync(changed)
        services.shadows.sync(changed)
        scan.append(1000 * (time.perf_counter() - t))
        assert not changed, changed
    return {
        "create_app_s": start_s,
        "poll_every_task_ms": summary(full),
        "poll_scan_ms": summary(scan),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def check_copies(url: str, copies: dict[str, str], asked: set[str]) -> dict[str, int]:
    """Each copy asked for answers the first texts exactly as its original does."""
    checked = differ = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        reference = {}
        for copy in sorted(asked):
            original = copies[copy]
            if original not in reference:
                reference[original] = client.post(
                    f"/predict/{original}", json={"inputs": TEXTS[:4]}
                ).json()
            body = client.post(f"/predict/{copy}", json={"inputs": TEXTS[:4]}).json()
            checked += 1
            if body.get("outputs") != reference[original].get("outputs"):
                differ += 1
                print(f"  {copy} answers unlike {original}", flush=True)
    return {"copies_checked": checked, "differences": differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--heads", type=int, default=1000)
    parser.add_argument("--big", type=int, default=400)
    parser.add_argument("--big-from", default="sentiment", help="the head the big copies copy")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--budget-share", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every phase's server (a setting to compare)",
    )
    parser.add_argument(
        "--server-cpus",
        type=int,
        nargs="+",
        help="the cores the server runs on (a replica of a fleet's shape: one core, with "
        "--set MTS_INTRA_OP_THREADS=1); its CPU figures count those cores only",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/skewed-heads.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mts-skewed-") as tmp:
        every = Path(tmp) / "every"
        copies = make_repo(args.repo.resolve(), every, args.heads, args.big, args.big_from)
        sizes = {
            name: head_bytes((every / "heads" / name / "1" / "head.onnx").stat().st_size)
            for name in copies
        }
        budget_mb = args.budget_share * sum(sizes.values()) / MIB
        order, weights = zipf_order(sorted(copies), args.zipf, seed=0)
        hot3 = order[:3]
        three = Path(tmp) / "three"
        shutil.copytree(every / "trunk", three / "trunk", copy_function=os.link)
        for name in hot3:
            shutil.copytree(every / "heads" / name, three / "heads" / name, copy_function=os.link)
        wide = trace(order, weights, 200_000, seed=1)
        narrow_weights = weights[:3] / weights[:3].sum()
        narrow = trace(hot3, narrow_weights, 200_000, seed=1)
        common = dict(item.split("=", 1) for item in args.set)
        budget = common | {"MTS_HEAD_MEMORY_MB": f"{budget_mb:.0f}"}
        polls = poll_costs(every, budget_mb)
        print(f"start and poll: {json.dumps(polls)}", flush=True)
        plans = {
            "budget": (every, budget, wide),
            "budget-uncompiled": (every, budget | {"MTS_HEAD_CACHE_MB": "0"}, wide),
            "budget-trim-evicted": (every, budget | {"MTS_HEAP_TRIM": "evicted"}, wide),
            "all-loaded": (every, common, wide),
            "hot-3-stored": (three, common, narrow),
            "hot-1000-stored": (every, budget, narrow),
        }
        results: dict[str, Any] = {
            "command": "python -m bench.skewed_heads "
            + " ".join(
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if k not in ("phases", "set", "server_cpus")
            )
            + " --phases "
            + " ".join(args.phases)
            + "".join(f" --set {item}" for item in args.set)
            + (" --server-cpus " if args.server_cpus else "")
            + " ".join(map(str, args.server_cpus or [])),
            "server_cores": len(args.server_cpus) if args.server_cpus else os.cpu_count(),
            "heads": args.heads,
            "copies_of": {
                o: sum(1 for c in copies.values() if c == o) for o in set(copies.values())
            },
            "budget_mb": round(budget_mb),
            "heads_mb": round(sum(sizes.values()) / MIB),
            "hot_head": hot3[0],
            "hot_share": round(float(weights[0]), 4),
            "start_and_poll": polls,
            "rounds": {p: [] for p in args.phases},
        }
        asked: set[str] = set()
        for r in range(args.rounds):
            for name in args.phases:
                repo, env, calls = plans[name]
                log = Path(tmp) / f"{name}-{r}.log"
                with phase_server(repo, env, log, args.server_cpus) as (url, pid, ready_s):
                    rss_ready = Sampler(pid, 0.1)  # trunk and pinned heads only
                    rss_ready.start()
                    time.sleep(0.5)
                    rss_ready.stop()
                    figures = run_phase(url, pid, calls, hot3[0], args)
                    figures["ready_s"] = ready_s
                    figures["rss_at_ready_mib"] = rss_ready.peak()
                    if name == "budget" and r == args.rounds - 1:
                        asked = set(calls[:50_000])
                        results["copies"] = check_copies(url, copies, asked)
                results["rounds"][name].append(figures)
                print(f"round {r} {name}: {json.dumps(figures)}", flush=True)
    write_phases(args.out, results)


if __name__ == "__main__":
    main()
