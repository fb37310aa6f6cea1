"""Resident memory of the trunk and heads' sessions with and without the serialised graphs kept.

ONNX Runtime's Python ``InferenceSession`` keeps the bytes it was made from for its whole life;
``Runtime.session`` lets them go (service/sessions.py). Each side loads the depth-aware trunk (cut
at the heads' taps, as ``mts serve`` does) and the repository's heads in a fresh child process,
runs one batch, and reports its VmRSS; "kept" runs the same code with the release turned off. The
two sides alternate over the rounds.

    .venv/bin/python -m bench.model_bytes [--repo model-repo] [--rounds 3]
        [--out bench/results/model-bytes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from support.results import write_results

CHILD = """
import sys
from pathlib import Path

import numpy as np

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service import sessions
from multitask_serve.service.trunk import TrunkSession

if sys.argv[2] == "kept":
    sessions._forget_model_bytes = lambda session: None
repo = ModelRepository(Path(sys.argv[1]))
spec = repo.read_trunk_spec()
heads = [repo.read_head(task) for task in repo.tasks()]
trunk = TrunkSession(repo.trunk_model_path)
trunk.prepare({h.spec.branch_layer for h in heads})
loaded = [
    sessions.HeadSession(h.model_path.read_bytes(), h.spec.output_name, spec.hidden_size)
    for h in heads
]
ids = np.ones((4, 16), dtype=np.int64)
feeds = {name: ids if name != "token_type_ids" else 0 * ids for name in trunk.input_names}
taps = trunk.run(feeds, sorted({f"tap_{h.spec.branch_layer}" for h in heads}))
for head, session in zip(heads, loaded):
    session.run(taps[f"tap_{head.spec.branch_layer}"], feeds["attention_mask"])
sessions.release_freed_memory()
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS"):
        print(int(line.split()[1]) / 1024)
"""


def rss(repo: Path, side: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), side],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return float(out.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/model-bytes.json"))
    args = p.parse_args()
    sides = ("released", "kept")
    rounds: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            rounds[side].append(rss(args.repo, side))
            print(f"round {r + 1} {side}: {rounds[side][-1]:.1f} MiB", file=sys.stderr)
    from multitask_serve.modelrepo.repository import ModelRepository

    stored = ModelRepository(args.repo)
    results = {
        "what": "VmRSS (MiB) of a process holding the cut trunk and every head of the repository, "
        "after one batch",
        "heads": {t: stored.read_head(t).spec.branch_layer for t in stored.tasks()},
        "rounds": rounds,
        "median_mib": {side: statistics.median(v) for side, v in rounds.items()},
        "released_minus_kept_mib": statistics.median(
            a - b for a, b in zip(rounds["released"], rounds["kept"], strict=True)
        ),
    }
    write_results(args.out, results)
    print(json.dumps(results["median_mib"]), f"difference {results['released_minus_kept_mib']:.1f}")


if __name__ == "__main__":
    main()
