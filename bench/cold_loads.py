"""What a cold load of a head with copied layers costs, from its stored graph vs compiled.

A replica with a budget loads heads again and again as they are evicted and asked for. This
measures one such load as the service makes it (``HeadSession``: the session options, one
intra-op pool per session, freed memory given back with ``malloc_trim`` after every 64 MiB
evicted, as service/residency.py does), in two ways side by side:

- ``graph``: from the stored head.onnx's bytes (parse, optimise, copy and pack the weights);
- ``compiled``: from the folder ``Runtime.compile`` wrote for this CPU (service/compiled.py):
  the optimised graph, its weights and their packed forms mapped from the page cache.

Each mode runs in a fresh process per round (rounds interleave the modes): ``--keep`` sessions
held like a budget, then ``--loads`` more, each evicting the oldest; every copy is a distinct
compiled folder, as each head has its own. Per load: wall and CPU milliseconds (the loading
thread's), minor page faults; per run: the process's peak RSS against its RSS before the loads
plus ``--keep`` heads (``head_bytes``), and whether the compiled head answers bit for bit as the
graph on the same input.

    .venv/bin/python -m bench.cold_loads [--repo model-repo] [--task sentiment] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.residency import TRIM_AFTER_EVICTED_BYTES, head_bytes
from multitask_serve.service.sessions import CPU, HeadSession, release_freed_memory
from support.results import write_results
from support.stats import summary

MODES = ("graph", "compiled")


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One mode, one round, in this process."""
    graph = Path(job["graph"])
    model = graph.read_bytes()
    size = head_bytes(len(model))
    folders = [Path(f) for f in job["folders"]]
    hidden_size, output = job["hidden_size"], job["output"]
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((4, 12, hidden_size)).astype(np.float32)
    mask = np.ones((4, 12), dtype=np.int64)
    reference = HeadSession(model, output, hidden_size).run(hidden, mask)
    release_freed_memory()
    base = _rss()
    held: list[HeadSession] = []
    walls, cpus, faults, peak, evicted, same = [], [], [], 0, 0, True
    for i, folder in enumerate(folders):
        started, cpu = time.perf_counter(), time.thread_time()
        faulted = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        # as the registry loads a head: the stored graph's bytes, or its compiled folder
        source = graph.read_bytes() if job["mode"] == "graph" else folder
        session = HeadSession(source, output, hidden_size)
        if i >= job["keep"]:
            walls.append(1e3 * (time.perf_counter() - started))
            cpus.append(1e3 * (time.thread_time() - cpu))
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faulted)
        if i == len(folders) - 1:
            same = bool(np.array_equal(session.run(hidden, mask), reference))
        held.append(session)
        if len(held) > job["keep"]:
            held.pop(0)
            evicted += size
            if evicted >= TRIM_AFTER_EVICTED_BYTES:
                evicted = 0
                release_freed_memory()
        peak = max(peak, _rss())
    bound = base + job["keep"] * size
    return {
        "load_ms_p50": float(np.percentile(walls, 50)),
        "load_ms_p95": float(np.percentile(walls, 95)),
        "load_ms_mean": float(np.mean(walls)),
        "cpu_ms_mean": float(np.mean(cpus)),
        "minor_faults_per_load": float(np.mean(faults)),
        "peak_rss_vs_bound": peak / bound,
        "end_rss_vs_bound": _rss() / bound,
        "answers_as_graph": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--task", default="sentiment", help="a head with copied layers")
    parser.add_argument("--keep", type=int, default=40)
    parser.add_argument("--loads", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cold-loads.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    store = ModelRepository(args.repo)
    stored = store.read_head(args.task)
    spec = stored.spec
    trunk = store.read_trunk_spec()
    with tempfile.TemporaryDirectory(prefix="mts-cold-loads-") as tmp:
        folders = []
        started = time.perf_counter()
        model = stored.model_path.read_bytes()
        for i in range(args.keep + args.loads):
            folder = Path(tmp) / f"copy-{i}"
            CPU.compile(model, folder)
            folders.append(str(folder))
        compile_s = (time.perf_counter() - started) / len(folders)
        compiled_bytes = sum(f.stat().st_size for f in Path(folders[0]).iterdir())
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES[r % 2 :] + MODES[: r % 2]:
                job = {
                    "mode": mode,
                    "graph": str(stored.model_path),
                    "folders": folders,
                    "keep": args.keep,
                    "hidden_size": trunk.hidden_size,
                    "output": spec.output_name,
                }
                out = subprocess.run(
                    [sys.executable, "-m", "bench.cold_loads", "--child", json.dumps(job)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                runs[mode].append(json.loads(out.splitlines()[-1]))
                print(f"round {r} {mode}: {runs[mode][-1]}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    results = {
        "command": f"python -m bench.cold_loads --repo {args.repo} --task {args.task} "
        f"--keep {args.keep} --loads {args.loads} --rounds {args.rounds}",
        "head": {
            "task": args.task,
            "branch_layer": spec.branch_layer,
            "graph_bytes": stored.model_path.stat().st_size,
            "compiled_bytes": compiled_bytes,
            "compile_ms": 1e3 * compile_s,
        },
        "runs": runs,
        "summary": {
            mode: {
                key: summary([run[key] for run in rounds])
                for key in rounds[0]
                if key != "answers_as_graph"
            }
            | {"answers_as_graph": all(run["answers_as_graph"] for run in rounds)}
            for mode, rounds in runs.items()
        },
    }
    write_results(args.out, results)
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
