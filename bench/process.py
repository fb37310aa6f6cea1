"""A ``mts serve`` child process for the reliability scripts: start it, wait, sample its RSS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.loadgen import free_port, memory_mb, wait_ready


def start_server(
    repo: Path, log: Path, env: dict[str, str], ready_timeout: float = 120.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mts serve`` on a free loopback port; return the process and its URL once ready."""
    port = free_port()
    variables = {**os.environ, "MTS_SHUTDOWN_DRAIN_SECONDS": "0", **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "multitask_serve",
                "serve",
                "--repo",
                str(repo),
                "--port",
                str(port),
            ],
            env=variables,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/readyz", ready_timeout, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def rss_mib(pid: int) -> float:
    """Resident memory of a process now (VmRSS), in MiB."""
    return memory_mb(pid)["VmRSS"]
