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
loads, the busiest replica's part of the texts and how many heads each replica holds; the CPU
seconds of the fleet's processes (Ray's included) per text and of the whole machine: a closed loop
at ``--in-flight`` need not keep both cores busy, and the model predicts the throughput at which
they are. A window in which other processes kept more than ``--max-other-cores`` busy (another job
on a shared machine) is discarded and measured again, up to ``--tries`` windows; the discarded
windows' figures are recorded.

    .venv/bin/python -m bench.fleet_skewed [--repo model-repo] [--heads 600] [--big 240]
        [--seconds 40] [--warmup 90] [--rounds 2] [--out bench/results/fleet-skewed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
PHASES = ("single-all-loaded", "all-loaded", "budget")
FLEET_MTS = Path(".venv-fleet/bin/mts")
REPLICA = "x-mts-replica"


@contextlib.contextmanager
def fleet(
    repo: Path, replicas: int, env: dict[str, str], log: Path, flags: Sequence[str] = ()
) -> Iterator[tuple[str, int]]:
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
        yield url, proc.pid
    finally:
        stop(proc, timeout=180)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and every live process below it (a fleet: Ray's processes, its
    proxy, router and replicas; one server: itself)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(pid)
            times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every core of this machine has spent busy (any process), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process's CPU seconds, every thread's: the load generator's."""
    times = os.times()
    return times.user + times.system


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
    url: str, pid: int, replicas: int, calls: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    def request(i: int) -> tuple[str, dict[str, Any], int]:
        return f"/predict/{calls[i % len(calls)]}", {"inputs": TEXTS[i % len(TEXTS)]}, 1

    measure(url, request, args.warmup, args.in_flight, strict=False)
    noisy = []
    for _ in range(args.tries):
        before = scrapes(url, replicas)
        cpu, busy, own = tree_cpu_seconds(pid), machine_busy_seconds(), own_cpu_seconds()
        run = measure(url, request, args.seconds, args.in_flight, strict=False)
        cpu, busy = tree_cpu_seconds(pid) - cpu, machine_busy_seconds() - busy
        # cores busy with neither the fleet nor this load generator: another job on the machine
        other = (busy - cpu - (own_cpu_seconds() - own)) / args.seconds
        after = scrapes(url, replicas)
        if other <= args.max_other_cores:
            break
        noisy.append(round(other, 3))
        print(f"  {other:.2f} cores busy elsewhere: measuring again", flush=True)
        time.sleep(args.seconds / 2)
    hits = total(after, "mts_head_lookups_total", 'result="hit"') - total(
        before, "mts_head_lookups_total", 'result="hit"'
    )
    misses = total(after, "mts_head_lookups_total", 'result="miss"') - total(
        before, "mts_head_lookups_total", 'result="miss"'
    )
    cold = total(after, "mts_head_cold_load_duration_seconds_count") - total(
        before, "mts_head_cold_load_duration_seconds_count"
    )
    # each replica's part of the texts: its prediction requests (single-text requests)
    lookups = {
        name: sample_sum(after[name], "mts_requests_total")
        - sample_sum(before[name], "mts_requests_total")
        for name in after
    }
    return {
        "texts_per_s": run.texts_per_s,
        # the fleet's processes' CPU seconds per second (2.0: both cores busy), and per text
        "server_cores_busy": cpu / args.seconds,
        "server_cpu_ms_per_text": 1e3 * cpu / (run.texts_per_s * args.seconds),
        # every process's, the load generator and anything else on the machine included
        "machine_cores_busy": busy / args.seconds,
        "other_cores_busy": other,
        # windows measured before this one and discarded: cores busy elsewhere in each
        "noisy_windows": noisy,
        "p50_ms": run.percentile_ms(50),
        "p99_ms": run.percentile_ms(99),
        "failures": dict(run.failures),
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "cold_loads": cold,
        "busiest_replica_share": max(lookups.values()) / sum(lookups.values())
        if sum(lookups.values())
        else None,
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
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument(
        "--max-other-cores",
        type=float,
        default=0.25,
        help="a window in which processes other than the fleet and the load generator kept "
        "more cores than this busy is discarded and measured again",
    )
    parser.add_argument("--tries", type=int, default=6, help="windows per phase at most")
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
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
            ),
            "heads": args.heads,
            "replicas": args.replicas,
            "cores": 2,
            "zipf": args.zipf,
            "budget_mb_per_replica": round(budget_mb),
            "heads_mb": round(sum(sizes) / MIB),
            "hot_share": round(float(weights[0]), 4),
            "rounds": {p: [] for p in args.phases},
        }
        for r in range(args.rounds):
            for name in args.phases:
                replicas, env = plans[name]
                started = time.monotonic()
                with fleet(repo, replicas, env, Path(tmp) / f"{name}-{r}.log") as (url, pid):
                    ready_s = time.monotonic() - started
                    figures = run_phase(url, pid, max(replicas, 1), calls, args)
                    figures["ready_s"] = ready_s
                results["rounds"][name].append(figures)
                print(f"round {r} {name}: {json.dumps(figures)}", flush=True)
    write_phases(args.out, results)


if __name__ == "__main__":
    main()
