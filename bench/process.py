"""A ``mts serve`` child process for the reliability scripts: start it, wait, sample its RSS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_server(
    repo: Path, log: Path, env: dict[str, str], ready_timeout: float = 120.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mts serve`` on a free loopback port; return the process and its URL once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    variables = {**os.environ, "MTS_SHUTDOWN_DRAIN_SECONDS": "0", **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mts", "serve", "--repo", str(repo), "--port", str(port)],
            env=variables,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"{url} not ready after {ready_timeout} s; see {log}")


def rss_mib(pid: int) -> float:
    """Resident memory of a process from /proc/<pid>/status (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
