"""Length groups vs one padded batch: the service's engine on real mixed-length texts.

A micro-batch is padded to its longest text. The engine can instead run it as length groups, each
padded to its own longest, when that saves more padded tokens than ``MTS_BATCH_GROUP_COST_TOKENS``
per extra run. This runs the engine (tokenize, trunk, the three default heads, decode) over
consecutive micro-batches of real texts with several run costs, alternating, and prints texts/s;
the cost that does best on a device is that device's default (service/engine.py).

    .venv/bin/python -m bench.length_groups --repo model-repo [--device cpu] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.pipelines_vs_ours import TASKS, real_texts
from multitask_serve.service.app import create_app
from multitask_serve.service.settings import Settings
from multitask_serve.service.types import Job

NEVER = 1 << 20


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--texts", type=int, default=192)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--costs", default=f"{NEVER},0,8,32,128")
    args = p.parse_args()
    costs = [int(c) for c in args.costs.split(",")]
    texts = real_texts(args.texts)
    apps = {
        c: create_app(
            Settings(repository=args.repo, device=args.device, batch_group_cost_tokens=c),
            CollectorRegistry(),
        )
        for c in costs
    }
    label = {c: "one padded batch" if c == NEVER else f"groups, run cost {c}" for c in costs}
    print(f"engine on {args.device}: tasks {', '.join(TASKS)}, {len(texts)} real texts")
    print("\n| texts per micro-batch | " + " | ".join(label[c] for c in costs) + " |")
    print("|---" * (1 + len(costs)) + "|")
    for size in (8, 16, 32):
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        seconds: dict[int, list[float]] = {c: [] for c in costs}
        runs: dict[int, float] = {}
        for app in apps.values():  # warm every shape once
            engine = app.state.services.engine
            engine.predict_many([Job(app.state.services.registry.loaded(list(TASKS)), batches[0])])
        for _ in range(args.rounds):
            for c, app in apps.items():
                engine, counted = (
                    app.state.services.engine,
                    app.state.services.metrics.registry.get_sample_value,
                )
                heads = app.state.services.registry.loaded(list(TASKS))
                before = counted("mts_trunk_runs_total")
                started = time.perf_counter()
                for batch in batches:
                    engine.predict_many([Job(heads, batch)])
                seconds[c].append(time.perf_counter() - started)
                runs[c] = counted("mts_trunk_runs_total") - before  # the same every round
        cells = [
            f"{len(texts) / statistics.median(seconds[c]):.1f} texts/s ({runs[c]:.0f} runs)"
            for c in costs
        ]
        print(f"| {size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
