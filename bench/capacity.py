"""How many replicas for how many heads: the capacity model (support/capacity.py) fed with one
replica's measured costs, for each placement design.

Costs come from one replica's skewed run (``--costs``, bench/skewed_heads.py: every head loaded
vs a budget of a fifth, the same Zipf traffic): core-ms per text with every head loaded (the
server's CPU seconds per text), core-ms per cold load (the budget run's extra CPU per text over
its cold loads per text), its RSS at ready, the all-loaded p99 and the cold-load p95. Head sizes
and load times are those runs' heads (bench/results/cold-loads.json, eviction.json's inputs).

``--validate FILE``: a two-replica fleet run (bench/fleet_skewed.py) to set the prediction
beside. Its all-loaded phase fixes the fleet's core-ms per text (the CPU of all its processes
per text: Ray's proxy, the router hop and both replicas); its budgeted phase is what is
predicted, never an input. Both replicas share the machine's cores, so the model runs with
shared cores: the fleet saturates when the machine does, at its cores over the core-ms per text.
``--replica-costs FILE``: a skewed run of one replica of the fleet's shape (bench/skewed_heads.py
--server-cpus 0 --set MTS_INTRA_OP_THREADS=1: one core, one intra-op thread) for the fleet's
core-ms per cold load. The fleet rows of the table use the fleet's costs, the other designs one
replica's. Then a table: 10,000 heads, 10 and 100 replicas of ``--cores`` cores and
``--memory-gib`` GiB each, per design (each replica its own cores), and the fewest replicas per
design for ``--texts-per-s``.

    .venv/bin/python -m bench.capacity [--validate bench/results/fleet-skewed-shares.json]
        [--replica-costs bench/results/skewed-heads-one-core.json]
        [--out bench/results/capacity.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from multitask_serve.service.residency import head_bytes
from support.capacity import (
    DESIGNS,
    Costs,
    Fleet,
    HeadClass,
    heads_of,
    predict,
    zipf_weights,
)
from support.results import write_results

MIB = 1 << 20
RESULTS = Path("bench/results")


def measured_costs(skewed: dict[str, Any]) -> Costs:
    """One replica's costs from its skewed run's medians: the server's own CPU seconds per text
    (its processes' CPU time over the texts answered, so neither the load generator nor anything
    else on the machine counts) with every head loaded, and per cold load the budget run's extra
    CPU per text over its cold loads per text."""
    budget, every = skewed["phases"]["budget"], skewed["phases"]["all-loaded"]
    seconds = float(skewed["command"].split("--seconds ")[1].split()[0])
    hit_ms = every["server_cpu_ms_per_text"]["median"]
    budget_ms = budget["server_cpu_ms_per_text"]["median"]
    loads_per_text = budget["cold_loads"]["median"] / (budget["texts_per_s"]["median"] * seconds)
    return Costs(
        hit_ms=hit_ms,
        load_ms=(budget_ms - hit_ms) / loads_per_text,
        ready_mib=budget["rss_at_ready_mib"]["median"],
        hit_p99_ms=every["p99_ms"]["median"],
        cold_load_p95_ms=budget["cold_load_p95_ms"]["median"],
    )


def head_classes(skewed: dict[str, Any], cold: dict[str, Any], loads: dict[str, Any]) -> list:
    """The skewed run's heads: copies of a head with three copied layers, the rest
    classifier-only, with the load seconds the eviction policy weighs."""
    heads = skewed["heads"]
    big = sum(n for name, n in skewed["copies_of"].items() if name == "sentiment")
    big_bytes = head_bytes(cold["head"]["graph_bytes"])
    small_bytes = int((skewed["heads_mb"] * MIB - big * big_bytes) / (heads - big))
    return [
        HeadClass("top-3", big / heads, big_bytes, loads["big_load_s"]),
        HeadClass("classifier-only", 1 - big / heads, small_bytes, loads["small_load_s"]),
    ]


def scenario(
    design: str,
    heads: int,
    replicas: int,
    cores: float,
    budget_mib: float,
    classes: list[HeadClass],
    costs: Costs,
    zipf: float,
    seed: int,
    shared_cores: bool = False,
) -> dict[str, Any]:
    sizes, loads = heads_of(classes, heads, seed)
    weights = zipf_weights(heads, zipf, seed)
    started = time.perf_counter()
    fleet = Fleet(replicas, cores, budget_mib, shared_cores)
    p = predict(design, fleet, costs, weights, sizes, loads, seed=seed)
    out = {k: v for k, v in dataclasses.asdict(p).items() if k != "groups"}
    out["hot_share"] = round(float(weights.max()), 4)
    out["groups"] = len(p.groups)
    out["model_s"] = round(time.perf_counter() - started, 1)
    return out


def smallest(fits: Any, needed: float, most: int = 4096) -> dict[str, Any]:
    """The prediction for the fewest replicas whose throughput reaches ``needed`` (doubling,
    then bisecting; throughput grows with replicas, if not smoothly)."""
    low, high = 0, 1
    row = fits(high)
    while row["texts_per_s"] < needed:
        if high >= most:
            return row | {"enough": False}
        low, high = high, high * 2
        row = fits(high)
    best = row
    while high - low > 1:
        middle = (low + high) // 2
        candidate = fits(middle)
        if candidate["texts_per_s"] >= needed:
            high, best = middle, candidate
        else:
            low = middle
    return best | {"enough": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs", type=Path, default=RESULTS / "skewed-heads-trim.json")
    parser.add_argument("--validate", type=Path, help="a fleet run (bench/fleet_skewed.py)")
    parser.add_argument(
        "--replica-costs",
        type=Path,
        help="a skewed run of one replica of the fleet's shape (--server-cpus): the fleet's "
        "cost per cold load",
    )
    parser.add_argument("--heads", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--cores", type=float, default=2.0, help="per replica")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="per replica")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument(
        "--texts-per-s",
        type=float,
        default=2000.0,
        help="traffic to size for: the fewest replicas per design whose predicted saturation "
        "throughput is at least this over --utilisation",
    )
    parser.add_argument("--utilisation", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "capacity.json")
    args = parser.parse_args()

    skewed = json.loads(args.costs.read_text())
    cold = json.loads((RESULTS / "cold-loads.json").read_text())
    loads = json.loads((RESULTS / "eviction.json").read_text())["inputs"]
    costs = measured_costs(skewed)
    classes = head_classes(skewed, cold, loads)
    results: dict[str, Any] = {
        "command": "python -m bench.capacity "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v
        ),
        "costs_from": str(args.costs),
        "costs": dataclasses.asdict(costs),
        "head_classes": [dataclasses.asdict(c) for c in classes],
    }
    fleet_costs = costs
    if args.validate is not None:
        run = json.loads(args.validate.read_text())
        every = run["phases"]["all-loaded"]

        def as_run(with_costs: Costs) -> dict[str, Any]:
            return scenario(
                "fleet",
                run["heads"],
                run["replicas"],
                run["cores"] / run["replicas"],
                run["budget_mb_per_replica"],
                classes,
                with_costs,
                run["zipf"],
                args.seed,
                shared_cores=True,  # both replicas ran on this machine's cores
            )

        # The fleet's core-ms per text with every head loaded is its processes' CPU per text in
        # the all-loaded phase (Ray's proxy, the router and both replicas); the cost of a cold
        # load is one replica's of the fleet's shape (--replica-costs) or, without it, the
        # single replica's. The budgeted phase is then predicted, never an input.
        if args.replica_costs is not None:
            shaped = measured_costs(json.loads(args.replica_costs.read_text()))
            results["replica_costs_from"] = str(args.replica_costs)
            results["replica_costs"] = dataclasses.asdict(shaped)
            fleet_costs = dataclasses.replace(
                costs, load_ms=shaped.load_ms, cold_load_p95_ms=shaped.cold_load_p95_ms
            )
        fleet_costs = dataclasses.replace(
            fleet_costs,
            hit_ms=every["server_cpu_ms_per_text"]["median"],
            hit_p99_ms=every["p99_ms"]["median"],
        )
        results["fleet_costs"] = dataclasses.asdict(fleet_costs)
        predicted = as_run(fleet_costs)
        # Round by round: each round's all-loaded phase calibrates, its budgeted phase (run right
        # after it) is predicted: how much of the gap is the run's own spread.
        rounds = run["rounds"]
        per_round = [
            round(
                as_run(dataclasses.replace(fleet_costs, hit_ms=calibration))["texts_per_s"]
                / (1000 * run["cores"] / budgeted),
                3,
            )
            for calibration, budgeted in zip(
                [r["server_cpu_ms_per_text"] for r in rounds["all-loaded"]],
                [r["server_cpu_ms_per_text"] for r in rounds["budget"]],
                strict=True,
            )
        ]
        measured = run["phases"]["budget"]
        results["validation"] = {
            "run": str(args.validate),
            "predicted": predicted,
            "measured": {
                "hit_ratio": measured["hit_ratio"]["median"],
                # the throughput at which the fleet's processes keep the run's cores busy, from
                # their CPU per text: what the model predicts, whatever else ran meanwhile
                "texts_per_s": 1000 * run["cores"] / measured["server_cpu_ms_per_text"]["median"],
                # what the closed loop at --in-flight got (other load on the machine included)
                "closed_loop_texts_per_s": measured["texts_per_s"]["median"],
                "p99_ms": measured["p99_ms"]["median"],
            },
        }
        for key in ("busiest_replica_share", "server_cores_busy", "machine_cores_busy"):
            if key in measured:  # runs before these were recorded lack them
                results["validation"]["measured"][key] = measured[key]["median"]
        for key in ("hit_ratio", "texts_per_s", "p99_ms"):
            ratio = predicted[key] / results["validation"]["measured"][key]
            results["validation"][f"{key}_predicted_over_measured"] = round(ratio, 3)
        results["validation"]["texts_per_s_predicted_over_measured_per_round"] = per_round
        print(json.dumps(results["validation"], indent=1), flush=True)
    budget_mib = 0.8 * args.memory_gib * 1024 - costs.ready_mib
    results["replica"] = {
        "cores": args.cores,
        "memory_gib": args.memory_gib,
        "head_budget_mib": round(budget_mib),
    }

    def at(design: str, replicas: int) -> dict[str, Any]:
        # Ray's routing costs the fleet its measured core-ms per text (with --validate); a
        # Gateway's hop runs outside the replicas, and ModelMesh's sidecar was not measured.
        design_costs = fleet_costs if design == "fleet" else costs
        return scenario(
            design,
            args.heads,
            replicas,
            args.cores,
            budget_mib,
            classes,
            design_costs,
            args.zipf,
            args.seed,
        )

    table = []
    for replicas in args.replicas:
        for design in DESIGNS:
            table.append(at(design, replicas))
            print(json.dumps(table[-1]), flush=True)
    results["table"] = {"heads": args.heads, "rows": table}
    needed = args.texts_per_s / args.utilisation
    sizing = {}
    for design in DESIGNS:
        fits = functools.partial(at, design)
        sizing[design] = smallest(fits, needed)
        print(f"sizing {design}: {json.dumps(sizing[design])}", flush=True)
    results["sizing"] = {
        "texts_per_s": args.texts_per_s,
        "utilisation": args.utilisation,
        "designs": sizing,
    }
    heads_mib = float(np.sum(heads_of(classes, args.heads, args.seed)[0])) / MIB
    results["table"]["heads_mib"] = round(heads_mib)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
