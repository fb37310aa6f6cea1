"""How long a newcomer waits: a clean clone's ``make serve`` to its first answer and to each
trained default head.

It clones this repository's HEAD into a temporary directory and runs there the command
``make serve`` runs once its ``setup`` step is done (``mts serve --repo model-repo --host
127.0.0.1 --port P --build-if-missing``, with the same defaults: no MTS_* variable set), from an
existing virtualenv (this checkout's .venv, linked into the clone; the clone's own sources are
the ones imported, checked before it starts). Install time is therefore excluded: `make setup`
on a clean machine adds its pip install on top (about 3 minutes measured on 2 cores).

From the moment the command starts it polls ``POST /predict/embed`` until the first answer, then
``GET /tasks`` until every default head is served (each then answers ``POST /predict/<task>``) or
has failed. It writes bench/results/first-answer.json: seconds to the first answer and to each
trained head's first answer, each head's training seconds and validation and test scores (from
the head.json the run stored, and the follower's log line), the build's own time from the log,
the CPU (``lscpu``'s model and whether it has avx512f, avx512_vnni, avx_vnni, avx512_bf16, amx:
what decides whether training runs in bf16), library versions and the load average. It takes
the machine's cores for a quarter of an hour: run it alone,

    .venv/bin/python -m bench.first_answer
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from support.machine import machine
from support.results import write_results
from support.servers import free_port, server_env

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HEADS = ("sentiment", "topic", "ner")
LSCPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16")
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
TEXT = "Apple shares jumped after the new iPhone launch in California"


def lscpu() -> dict[str, Any]:
    """The CPU model and which instruction sets that change training and int8 costs it has."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"error": str(exc)}
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in out.splitlines())
    )
    flags = set(fields.get("Flags", "").split())
    summary: dict[str, Any] = {f: f in flags for f in LSCPU_FLAGS}
    summary["amx"] = sorted(f for f in AMX_FLAGS if f in flags)
    return {
        "model_name": fields.get("Model name", "?"),
        "cpus": fields.get("CPU(s)", "?"),
        "threads_per_core": fields.get("Thread(s) per core", "?"),
        "flags": summary,
    }


def clone(workdir: Path, venv: Path) -> Path:
    """A clean clone of HEAD with ``venv`` linked in as its .venv; checks it imports its own
    sources, not the checkout the virtualenv was installed from."""
    target = workdir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)
    (target / ".venv").symlink_to(venv)
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import multitask_serve; print(multitask_serve.__file__)",
        ],
        cwd=target,
        env=env_for(target),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(target.resolve()):
        sys.exit(f"the clone imports {where}, not its own sources")
    return target


def env_for(checkout: Path) -> dict[str, str]:
    # No MTS_* variable (make serve's defaults); the clone's sources first on the path, for the
    # server and both of its children.
    return server_env({"PYTHONPATH": str(checkout)})


def poll_first_answer(http: httpx.Client, proc: subprocess.Popen[bytes], started: float) -> float:
    while proc.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if http.post("/predict/embed", json={"inputs": TEXT}).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"mts serve exited with {proc.returncode} before answering")


def poll_trained(
    http: httpx.Client, proc: subprocess.Popen[bytes], started: float, timeout: float
) -> dict[str, Any]:
    """Seconds from start to each default head's first answer, or its failure."""
    heads: dict[str, Any] = {}
    while len(heads) < len(DEFAULT_HEADS):
        if proc.poll() is not None:
            raise RuntimeError(f"mts serve exited with {proc.returncode}")
        if time.monotonic() - started > timeout:
            break
        listing = http.get("/tasks").json()
        served = {t["task"] for t in listing["tasks"]}
        for task in DEFAULT_HEADS:
            if task in heads or task not in served:
                continue
            answer = http.post(f"/predict/{task}", json={"inputs": TEXT})
            if answer.status_code == 200:
                heads[task] = {"seconds_to_answer": round(time.monotonic() - started, 1)}
        for head in listing["training"]:
            if head["state"] == "failed" and head["task"] not in heads:
                heads[head["task"]] = {"failed": head["error"]}
        time.sleep(1.0)
    return heads


def from_repository(repo: Path, task: str) -> dict[str, Any]:
    from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError

    try:
        spec = ModelRepository(repo).read_head(task).spec
    except RepositoryError as exc:
        return {"error": str(exc)}
    training = spec.training
    return {
        "strategy": training.get("strategy"),
        "mixed_precision": training.get("config", {}).get("mixed_precision"),
        "train_seconds": training.get("train_seconds"),
        "validation": training.get("validation"),
        "test": training.get("test"),
        "epochs_run": training.get("epochs_run"),
    }


def from_log(text: str) -> dict[str, Any]:
    """The build's time and the follower's line per trained head."""
    built = re.search(r"built \S+ in ([\d.]+) s", text)
    trained = {
        m.group(1): m.group(0)
        for m in re.finditer(r"trained (\S+) \(.*?\) in [\d.]+ s: [^\n]*", text)
    }
    return {"build_seconds": float(built.group(1)) if built else None, "trained_lines": trained}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    checkout = clone(workdir, args.venv.resolve())
    port = free_port()
    command = [str(args.venv.resolve() / "bin" / "python"), "-m", "multitask_serve", "serve"]
    command += ["--repo", "model-repo", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--build-if-missing"]
    log_path = workdir / "serve.log"
    load_before = os.getloadavg()
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            command, cwd=checkout, env=env_for(checkout), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            first = poll_first_answer(http, proc, started)
            print(f"first answer after {first:.1f} s", flush=True)
            heads = poll_trained(http, proc, started, args.timeout)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log_path.read_text(errors="replace")
    if args.log:
        args.log.write_text(text)
    for task, head in heads.items():
        if "seconds_to_answer" in head:
            head.update(from_repository(checkout / "model-repo", task))
    answered = [h["seconds_to_answer"] for h in heads.values() if "seconds_to_answer" in h]
    return {
        "command": "mts serve --repo model-repo --host 127.0.0.1 --port <free> --build-if-missing "
        "(what `make serve` runs after setup), in a clean clone of HEAD, no MTS_* variables",
        "install": "excluded: an existing virtualenv linked in as the clone's .venv",
        "seconds_to_first_answer": round(first, 1),
        "seconds_to_last_trained_head": max(answered) if answered else None,
        "heads": heads,
        "log": from_log(text),
        "server_exit_status": proc.returncode,
        "cpu": lscpu(),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--venv", type=Path, default=ROOT / ".venv", help="virtualenv to reuse")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the heads")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/first-answer.json")
    p.add_argument("--log", type=Path, help="keep the server's output (both children's too) here")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="first-answer-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({k: result[k] for k in ("seconds_to_first_answer", "heads")}, indent=2))
    write_results(args.out, result, indent=2)


if __name__ == "__main__":
    main()
