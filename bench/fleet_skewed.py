"""The fleet under skewed traffic: two replicas behind Ray Serve (``mts fleet``) on this machine,
measured to check the capacity model's prediction (bench/capacity.py --validate).

The repository and traffic are bench/skewed_heads.py's (``--heads`` copies, ``--big`` of them with
three copied layers, single-text requests for heads drawn from a Zipf law, closed loop at
``--in-flight``), against ``mts fleet --replicas 2`` from the fleet extra's environment
(.venv-fleet). Phases, interleaved over ``--rounds``, each a fresh fleet:

- ``single-all-loaded``: one ``mts serve`` process instead, every head loaded, both cores its
  own: what the fleet's routing costs, side by side;
- ``all-loaded``: every head loaded on both replicas (no budget): the fleet's cost per text with
  its router hop, the model's input;
- ``budget``: each replica's MTS_HEAD_MEMORY_MB a fifth of the heads' bytes divided by the
  replicas (the fleet holds what one replica of the single-replica run held): what the model
  predicts.

Per phase, after ``--warmup`` seconds of the same traffic: texts/s, p50/p99, and, summed over both
replicas' /metrics (read through the router until each replica has answered), the hit ratio, cold
loads and how many heads each replica holds.

    .venv/bin/python -m bench.fleet_skewed [--repo model-repo] [--heads 600] [--big 240]
        [--seconds 40] [--warmup 90] [--rounds 2] [--out bench/results/fleet-skewed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.http_vs_ort import TEXTS
from bench.loadgen import measure
from bench.skewed_heads import make_repo, sample_sum, trace, zipf_order
from multitask_serve.service.residency import head_bytes
from support.results import write_phases
from support.servers import free_port, start, stop

MIB = 1 << 20
FLEET_MTS = Path(".venv-fleet/bin/mts")
REPLICA = "x-mts-replica"


@contextlib.contextmanager
def fleet(
    repo: Path, replicas: int, env: dict[str, str], log: Path, flags: Sequence[str] = ()
) -> Iterator[str]:
    """``mts fleet`` with ``replicas`` replicas and ``flags``; 0: one ``mts serve`` process
    instead."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if replicas == 0:
        command = [sys.executable, "-m", "multitask_serve", "serve", "--repo", str(repo)]
        command += ["--port", str(port)]
    else:
        command = [str(FLEET_MTS), "fleet", "--repo", str(repo), "--port", str(port)]
        command += ["--replicas", str(replicas), "--replica-cpus", "0", "--num-cpus", "2"]
        command += list(flags)
    proc = start(command, url, env=env, log=log, timeout=1200)
    try:
        yield url
    finally:
        stop(proc, timeout=180)


def scrapes(url: str, replicas: int) -> dict[str, str]:
    """Each replica's /metrics, read through the router until every replica has answered."""
    seen: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(500):
            r = client.get("/metrics")
            seen[r.headers.get(REPLICA, "single")] = r.text
            if len(seen) == replicas:
                return seen
    raise RuntimeError(f"only {sorted(seen)} of {replicas} replicas answered /metrics")


def total(texts: dict[str, str], name: str, labels: str = "") -> float:
    return sum(sample_sum(t, name, labels) for t in texts.values())


def run_phase(
    url: str, replicas: int, calls: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    def request(i: int) -> tuple[str, dict[str, Any], int]:
        return f"/predict/{calls[i % len(calls)]}", {"inputs": TEXTS[i % len(TEXTS)]}, 1

    measure(url, request, args.warmup, args.in_flight, strict=False)
    before = scrapes(url, replicas)
    run = measure(url, request, args.seconds, args.in_flight, strict=False)
    after = scrapes(url, replicas)
    hits = total(after, "mts_head_lookups_total", 'result="hit"') - total(
        before, "mts_head_lookups_total", 'result="hit"'
    )
    misses = total(after, "mts_head_lookups_total", 'result="miss"') - total(
        before, "mts_head_lookups_total", 'result="miss"'
    )
    cold = total(after, "mts_head_cold_load_duration_seconds_count") - total(
        before, "mts_head_cold_load_duration_seconds_count"
    )
    return {
        "texts_per_s": run.texts_per_s,
        "p50_ms": run.percentile_ms(50),
        "p99_ms": run.percentile_ms(99),
        "failures": dict(run.failures),
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "cold_loads": cold,
        "loaded_heads_per_replica": sorted(
            sample_sum(t, "mts_heads_loaded") for t in after.values()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--heads", type=int, default=600)
    parser.add_argument("--big", type=int, default=240)
    parser.add_argument("--big-from", default="sentiment")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--budget-share", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=90.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fleet-skewed.json"))
    args = parser.parse_args()
    if not FLEET_MTS.exists():
        raise SystemExit(f"{FLEET_MTS} is missing: make fleet-setup")

    with tempfile.TemporaryDirectory(prefix="mts-fleet-skewed-") as tmp:
        repo = Path(tmp) / "repo"
        copies = make_repo(args.repo.resolve(), repo, args.heads, args.big, args.big_from)
        sizes = [
            head_bytes((repo / "heads" / c / "1" / "head.onnx").stat().st_size) for c in copies
        ]
        budget_mb = args.budget_share * sum(sizes) / MIB / args.replicas
        order, weights = zipf_order(sorted(copies), args.zipf, seed=0)
        calls = trace(order, weights, 200_000, seed=1)
        common = {"MTS_INTRA_OP_THREADS": "1"}
        # name: (replicas, env); 0 replicas: one `mts serve` process, both cores its own
        plans = {
            "single-all-loaded": (0, {}),
            "all-loaded": (args.replicas, common),
            "budget": (args.replicas, common | {"MTS_HEAD_MEMORY_MB": f"{budget_mb:.0f}"}),
        }
        results: dict[str, Any] = {
            "command": "python -m bench.fleet_skewed "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
            "heads": args.heads,
            "replicas": args.replicas,
            "cores": 2,
            "zipf": args.zipf,
            "budget_mb_per_replica": round(budget_mb),
            "heads_mb": round(sum(sizes) / MIB),
            "hot_share": round(float(weights[0]), 4),
            "rounds": {p: [] for p in plans},
        }
        for r in range(args.rounds):
            for name, (replicas, env) in plans.items():
                started = time.monotonic()
                with fleet(repo, replicas, env, Path(tmp) / f"{name}-{r}.log") as url:
                    ready_s = time.monotonic() - started
                    figures = run_phase(url, max(replicas, 1), calls, args)
                    figures["ready_s"] = ready_s
                results["rounds"][name].append(figures)
                print(f"round {r} {name}: {json.dumps(figures)}", flush=True)
    write_phases(args.out, results)


if __name__ == "__main__":
    main()
