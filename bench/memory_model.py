"""The terms of a replica's resident memory, measured: process, trunk, each head, activations.

Each configuration runs in a child process of its own (a fresh heap), which loads the repository
as ``mts serve`` does (``create_app``) and then runs the engine's batch path directly on batches
of ``rows`` texts of exactly ``length`` tokens for the given tasks. Per run the peak resident
memory is reset (``/proc/self/clear_refs``) and read back (VmHWM) after it: the run's activations
are the peak over the resident memory before it. With ONNX Runtime's CPU arena on, what a run
leaves resident is recorded too (the arena keeps its largest activations).

The fit, per trunk layer's work: activation bytes = rows x length x (a + b x length), the linear
term the hidden states and feed-forward intermediates, the quadratic one attention scores.
``service/memory.py`` uses the fitted coefficients (scaled by the trunk's width).

    .venv/bin/python -m bench.memory_model [--repo model-repo]
        [--out bench/results/memory-model.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from support.machine import machine
from support.results import write_results

SHAPES = [(1, 256), (8, 64), (8, 128), (8, 256), (16, 256), (32, 64), (32, 128), (32, 256)]
TASK_SETS = {
    "sentiment (top-3)": ["sentiment"],
    "topic (head-only, tap 6)": ["topic"],
    "ner (top-4, tap 2)": ["ner"],
    "all three": ["sentiment", "topic", "ner"],
}

# A child's resident memory now and at its peak (VmRSS, VmHWM), in MiB; bench/arenas.py too.
PROC_STATUS = r"""
from pathlib import Path


def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out
"""

CHILD = (
    PROC_STATUS
    + r"""
import gc, json, os, sys, time


def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")


args = json.loads(sys.argv[1])
os.environ["MTS_CPU_ARENA"] = "true" if args["arena"] else "false"
started = status()["VmRSS"]
from prometheus_client import CollectorRegistry  # noqa: E402
from multitask_serve.service.app import create_app  # noqa: E402
from multitask_serve.service.settings import Settings  # noqa: E402
from multitask_serve.service.sessions import release_freed_memory  # noqa: E402
from multitask_serve.service.types import Job  # noqa: E402

imported = status()["VmRSS"]
settings = Settings(repository=Path(args["repo"]), cpu_arena=args["arena"])
app = create_app(settings, CollectorRegistry())
gc.collect()
release_freed_memory()
loaded = status()["VmRSS"]
engine, registry = app.state.services.engine, app.state.services.registry
heads = registry.loaded(args["tasks"])
rows = []
for n, length in args["shapes"]:
    texts = [" ".join(["hello"] * (length - 2))] * n
    engine.predict_many([Job(heads, texts)])  # warm: sessions, memory patterns, arena
    gc.collect()
    release_freed_memory()
    before = status()["VmRSS"]
    reset_peak()
    t0 = time.perf_counter()
    engine.predict_many([Job(heads, texts)])
    seconds = time.perf_counter() - t0
    after = status()
    rows.append({
        "rows": n, "length": length, "seconds": seconds, "before_mib": before,
        "peak_mib": after["VmHWM"], "after_mib": after["VmRSS"],
        "activations_mib": after["VmHWM"] - before,
    })
print(json.dumps({
    "process_mib": started, "imports_mib": imported - started, "loaded_mib": loaded,
    "runs": rows,
}))
"""
)

HEAD_CHILD = r"""
import gc, json, sys
from pathlib import Path


def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024


from multitask_serve.modelrepo.repository import ModelRepository  # noqa: E402
from multitask_serve.service.sessions import CPU, HeadSession, release_freed_memory  # noqa: E402

repo = ModelRepository(Path(sys.argv[1]))
out = {}
for task in json.loads(sys.argv[2]):
    stored = repo.read_head(task)
    gc.collect(); release_freed_memory()
    before = rss()
    model = stored.model_path.read_bytes()
    session = HeadSession(model, stored.spec.output_name, stored.spec.hidden_size, CPU)
    del model
    gc.collect(); release_freed_memory()
    out[task] = {
        "kind": str(stored.spec.kind), "branch_layer": stored.spec.branch_layer,
        "file_mib": stored.model_path.stat().st_size / 2**20, "resident_mib": rss() - before,
    }
    globals().setdefault("keep", []).append(session)
print(json.dumps(out))
"""


def child(code: str, *argv: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTS_")}
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(runs: list[dict[str, Any]]) -> tuple[float, float]:
    """Least squares of activation bytes = rows x length x (a + b x length); (a, b) in bytes."""
    x = np.array([[r["rows"] * r["length"], r["rows"] * r["length"] ** 2] for r in runs], float)
    y = np.array([r["activations_mib"] * 2**20 for r in runs])
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(a), float(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--out", type=Path, default=Path("bench/results/memory-model.json"))
    args = p.parse_args()
    results: dict[str, Any] = {"machine": machine(), "shapes": SHAPES, "configs": []}
    results["heads"] = child(HEAD_CHILD, str(args.repo), json.dumps(["sentiment", "topic", "ner"]))
    print(json.dumps(results["heads"], indent=1))
    for arena in (False, True):
        for name, tasks in TASK_SETS.items():
            spec = {"repo": str(args.repo), "tasks": tasks, "shapes": SHAPES, "arena": arena}
            got = child(CHILD, json.dumps(spec))
            a, b = fit(got["runs"])
            config = {"arena": arena, "tasks": name, **got, "fit_a_bytes": a, "fit_b_bytes": b}
            results["configs"].append(config)
            print(f"arena {arena} {name}: loaded {got['loaded_mib']:.0f} MiB, a {a:.0f} b {b:.1f}")
            for r in got["runs"]:
                model = r["rows"] * r["length"] * (a + b * r["length"]) / 2**20
                print(
                    f"  {r['rows']:3d} x {r['length']:3d}: +{r['activations_mib']:7.1f} MiB "
                    f"(fit {model:7.1f}), after {r['after_mib'] - r['before_mib']:+7.1f}, "
                    f"{r['seconds']:.2f} s"
                )
    write_results(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
