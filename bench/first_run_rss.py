"""Server memory after the first ``make serve`` (``mts serve --build-if-missing`` on no repository)
against the same repository served after a restart.

Each round starts ``mts serve --repo <new dir> --build-if-missing`` (the command ``make serve``
runs) on a directory that does not exist, so the server builds the repository first; once it is
ready and no head is left training (a child trains the default heads while the server answers),
the same warm-up load goes through it, then its VmRSS, its peak (VmHWM) and the torch libraries
in its memory map are read from /proc. The server is stopped and the same command is
started again on the now complete repository (a restart: nothing is built), with the same load
and the same readings. Rounds alternate the two sides; the summary gives each side's median with
its range and the median ratio first run / restart.

By default the build is the real one (the default encoder, trained heads: minutes on two cores).
``--tiny`` builds from the tests' tiny random encoder instead (seconds; ``--no-train`` skips the
trained heads). Results are merged under ``--label`` into ``--out``:

    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.first_run_rss --rounds 1 --label default
    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.first_run_rss --tiny --label tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from support.results import read_results, write_results
from support.servers import free_port, memory_mb, mts_serve, start, stop
from support.stats import summary

TEXTS = [
    "I love this phone, best purchase ever",
    "worst customer service, never again",
    "Apple shares jumped after the new iPhone launch in California",
    "The striker scored twice in the final",
]


def torch_libraries(pid: int) -> list[str]:
    """Shared objects of torch mapped into the process (libtorch*, torch/_C...)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    paths = {line.split()[-1] for line in maps if len(line.split()) >= 6}
    return sorted(Path(p).name for p in paths if "torch" in p and ".so" in p)


def warm_up(url: str, requests: int) -> dict[str, Any]:
    """``requests`` multi-task predictions of four texts each, every served task."""
    with httpx.Client(base_url=url, timeout=120) as http:
        tasks = [t["task"] for t in http.get("/tasks").json()["tasks"]]
        for _ in range(requests):
            r = http.post("/predict", json={"inputs": TEXTS, "tasks": tasks})
            r.raise_for_status()
    return {"tasks": tasks, "requests": requests, "texts_per_request": len(TEXTS)}


def wait_trained(url: str, proc: Any) -> float:
    """When no head is left training: a first run serves before the default heads are trained
    (a child trains them and the server adds each), and memory is read once all are in."""
    with httpx.Client(base_url=url, timeout=120) as http:
        while any(h["state"] != "failed" for h in http.get("/tasks").json()["training"]):
            if proc.poll() is not None:
                raise RuntimeError(f"mts serve exited with {proc.returncode}")
            time.sleep(1.0)
    return time.monotonic()


def serve_once(command: list[str], port: int, log: Path, requests: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    env = {"MTS_INTRA_OP_THREADS": "1", "MTS_SHUTDOWN_DRAIN_SECONDS": "0"}
    started = time.monotonic()
    proc = start(command, url, env=env, log=log, timeout=3600)
    ready = time.monotonic() - started
    try:
        trained = wait_trained(url, proc)
        load = warm_up(url, requests)
        time.sleep(1.0)  # let freed memory settle before reading
        memory = memory_mb(proc.pid)
        return {
            "seconds_to_ready": round(ready, 1),
            "seconds_to_trained": round(trained - started, 1),
            "rss_mib": round(memory["VmRSS"], 1),
            "peak_rss_mib": round(memory["VmHWM"], 1),
            "torch_libraries_mapped": torch_libraries(proc.pid),
            "load": load,
        }
    finally:
        stop(proc)


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    encoder: list[str] = []
    if args.tiny:
        from support.tiny import write_tiny_encoder

        encoder = ["--encoder", str(write_tiny_encoder(workdir / "encoder", seed=0))]
    elif args.encoder:
        encoder = ["--encoder", str(args.encoder)]
    rounds = []
    for i in range(args.rounds):
        repo = workdir / f"round-{i}" / "model-repo"  # missing: the first run builds it
        port = free_port()
        command = [*mts_serve(repo, port), "--build-if-missing", *encoder]
        command += ["--no-train"] if args.no_train else []
        log = (args.logs or workdir) / f"round-{i}.log"
        first = serve_once(command, port, log, args.requests)
        restart = serve_once(command, port, log, args.requests)
        rounds.append({"first_run": first, "restart": restart})
        print(json.dumps(rounds[-1]), flush=True)
    firsts = [r["first_run"]["rss_mib"] for r in rounds]
    restarts = [r["restart"]["rss_mib"] for r in rounds]
    return {
        "rounds": rounds,
        "summary": {
            "first_run_rss_mib": summary(firsts),
            "restart_rss_mib": summary(restarts),
            "first_over_restart": summary([f / r for f, r in zip(firsts, restarts, strict=True)]),
            "torch_mapped_in_any_server": any(
                r[side]["torch_libraries_mapped"] for r in rounds for side in r
            ),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="build from the tests' tiny encoder")
    p.add_argument("--encoder", type=Path, help="a local Hugging Face encoder directory")
    p.add_argument("--no-train", action="store_true", help="only the training-free heads")
    p.add_argument("--rounds", type=int, default=3, help="first run + restart pairs")
    p.add_argument("--requests", type=int, default=200, help="warm-up requests per server")
    p.add_argument("--label", default="default", help="the key of this run in --out")
    p.add_argument("--out", type=Path, default=Path("bench/results/first-run-rss.json"))
    p.add_argument("--logs", type=Path, help="keep the servers' output (the build's too) here")
    args = p.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="first-run-rss-") as tmp:
        result = measure(args, Path(tmp))
    result["settings"] = {
        "encoder": "tiny (support/tiny.py)" if args.tiny else str(args.encoder or "default"),
        "trained_heads": not args.no_train,
        "rounds": args.rounds,
        "warm_up_requests": args.requests,
        "intra_op_threads": 1,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": "mts serve --repo <missing dir> --build-if-missing, then the same again",
    }
    print(json.dumps(result["summary"], indent=2))
    merged = read_results(args.out, {"runs": {}})
    merged["runs"][args.label] = result
    write_results(args.out, merged, indent=2)


if __name__ == "__main__":
    main()
