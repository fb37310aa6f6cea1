"""ONNX Runtime's CPU arenas, three ways, side by side: speed and what stays resident.

- off: no arena (the default): each run's activations are allocated and given back;
- per session: every session's own arena (``MTS_CPU_ARENA=true``), which keeps that session's
  largest run for good;
- shared: one arena for every session of the process (``create_and_register_allocator`` and the
  ``session.use_env_allocators`` session option), growing by what is asked (kSameAsRequested).

Each configuration in a child process of its own loads the repository as ``mts serve`` does and
runs the engine's batch path directly, all three trained heads on every text: 8 short texts
(a typical micro-batch), then 32 texts of the served length (the largest batch the default
settings form), then the short batches again; milliseconds per run and the resident memory after
each phase. Configurations alternate over rounds; a figure is the median over rounds.

    .venv/bin/python -m bench.arenas [--repo model-repo] [--rounds 3]
        [--out bench/results/arenas.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.memory_model import PROC_STATUS
from support.machine import machine
from support.results import write_results
from support.stats import summary

MODES = ("off", "per session", "shared")

CHILD = (
    PROC_STATUS
    + r"""
import json, sys, time
from pathlib import Path
import onnxruntime as ort
from multitask_serve.service import sessions

mode, repo = sys.argv[1], sys.argv[2]
if mode == "shared":
    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
    plain = sessions.Runtime.options

    def options(self):
        o = plain(self)
        o.add_session_config_entry("session.use_env_allocators", "1")
        return o

    sessions.Runtime.options = options
from prometheus_client import CollectorRegistry
from multitask_serve.service.app import create_app
from multitask_serve.service.settings import Settings
from multitask_serve.service.types import Job


settings = Settings(
    repository=Path(repo), cpu_arena=mode == "per session", memory_limit_mb=0
)
app = create_app(settings, CollectorRegistry())
engine, registry = app.state.services.engine, app.state.services.registry
heads = registry.loaded(["sentiment", "topic", "ner"])
words = "the market rallied as investors cheered strong results".split()
long = [" ".join(words[(i + j) % len(words)] for j in range(300)) for i in range(32)]
short = ["the bank cut its profit forecast and shares fell sharply today"] * 8
out = {"loaded_mib": status()["VmRSS"]}
for name, texts, n in (("8 short", short, 40), ("32 x 256", long, 4), ("8 short again", short, 40)):
    engine.predict_many([Job(heads, texts)])
    t0 = time.perf_counter()
    for _ in range(n):
        engine.predict_many([Job(heads, texts)])
    out[name] = {"ms_per_run": (time.perf_counter() - t0) / n * 1000, "rss_mib": status()["VmRSS"]}
out["peak_mib"] = status()["VmHWM"]
print(json.dumps(out))
"""
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/arenas.json"))
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTS_")}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(args.repo)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {mode}: {runs[mode][-1]}", file=sys.stderr)
    phases = ("8 short", "32 x 256", "8 short again")
    results: dict[str, Any] = {"machine": machine(), "runs": runs, "summary": {}}
    for mode in MODES:
        for phase in phases:
            for figure in ("ms_per_run", "rss_mib"):
                values = [run[phase][figure] for run in runs[mode]]
                results["summary"][f"{mode}: {phase}, {figure}"] = summary(values)
        results["summary"][f"{mode}: peak_mib"] = summary([run["peak_mib"] for run in runs[mode]])
    for mode in MODES[1:]:
        for phase in phases:
            ratios = [
                o[phase]["ms_per_run"] / m[phase]["ms_per_run"]
                for o, m in zip(runs["off"], runs[mode], strict=True)
            ]
            results["summary"][f"{phase}: time off / {mode}"] = summary(ratios)
    write_results(args.out, results)
    for key, value in results["summary"].items():
        print(f"{key}: {value['median']} ({value['min']}-{value['max']})")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
