"""A real ``mts serve`` process on loopback, spoken to over real HTTP."""

from __future__ import annotations

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


def start(repo: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MTS_ADMIN_TOKEN": ADMIN_TOKEN, "MTS_INTRA_OP_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mts", "serve", "--repo", str(repo), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stdout.read().decode() if proc.stdout else ''}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@pytest.fixture
def server(repo: Path) -> Iterator[str]:
    port = free_port()
    proc = start(repo, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_served_process_answers_predictions_and_hot_adds_over_http(server, archives):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server, timeout=30) as http:
        embed = http.post("/predict/embed", json={"inputs": "hello"})
        assert embed.status_code == 200 and len(embed.json()["outputs"]) > 0
        zs = http.post("/predict/topic-zs", json={"inputs": ["a goal in the match"]})
        assert zs.status_code == 200 and zs.json()["outputs"][0]["label"]

        before = http.post("/predict/topic-zs", json={"inputs": ["a", "b c"]}).json()["outputs"]
        added = http.post("/admin/heads/ner", content=archives["ner"], headers=admin)
        assert added.status_code == 201, added.text
        assert http.post("/predict/ner", json={"inputs": "john lives in paris"}).status_code == 200
        refused = http.post("/admin/heads/sentiment", content=archives["foreign"], headers=admin)
        assert refused.status_code == 409
        after = http.post("/predict/topic-zs", json={"inputs": ["a", "b c"]}).json()["outputs"]
        assert after == before

        tasks = {t["task"] for t in http.get("/tasks").json()["tasks"]}
        assert tasks == {"embed", "topic-zs", "ner"}
        metrics = http.get("/metrics").text
        assert 'mts_request_duration_seconds_count{task="ner"} 1.0' in metrics
