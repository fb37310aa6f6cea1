"""Crash consistency, the long run: kill -9 a real ``mts serve`` at random moments while heads
change, and check every restart (support/crash_loop.py says what is checked;
tests/e2e/test_crash_consistency.py is the short run).

    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.crash_loop --repo model-repo --kills 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from support.crash_loop import crash_loop


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"), help="copied, never changed")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=2.0, help="seconds before each kill, at most")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="crash-loop-") as tmp:
        result = crash_loop(args.repo, args.kills, args.seed, args.max_delay, Path(tmp))
    restarts = result.pop("restarts")
    for key, value in result.items():
        print(f"{key}: {value}")
    problems = [f"restart {i}: {p}" for i, r in enumerate(restarts) for p in r.problems()]
    if problems or result["kills"] != args.kills:
        sys.exit("\n".join([*problems, f"{result['kills']} of {args.kills} kills by SIGKILL"]))
    print("all checks passed after every restart")


if __name__ == "__main__":
    main()
