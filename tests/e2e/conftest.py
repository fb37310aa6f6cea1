"""Fixtures for end-to-end tests: a real ``mts serve`` process on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(repo: Path, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mts serve`` on a free loopback port and wait until it is ready."""
    port = free_port()
    variables = {
        **os.environ,
        "MTS_ADMIN_TOKEN": ADMIN_TOKEN,
        "MTS_INTRA_OP_THREADS": "1",
        "MTS_SHUTDOWN_DRAIN_SECONDS": "0",  # tests stop servers often; the drain has its own test
        **env,
    }
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
        wait_ready(url, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


@contextlib.contextmanager
def serving(repo: Path, log: Path, **env: str) -> Iterator[str]:
    """A ``mts serve`` process on a free loopback port; yields its URL, stops it after."""
    proc, url = launch(repo, log, **env)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[str]:
    with serving(repo, tmp_path / "server.log") as url:
        yield url
