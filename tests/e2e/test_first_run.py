"""The first ``make serve``: ``mts serve --build-if-missing`` where no repository exists yet.

The build (torch, export) runs in a child process, so the server that answers afterwards never
mapped libtorch; a build that fails ends the command with a clear message and a non-zero status.
The build trains nothing: the server answers with the training-free heads at once and the default
heads train in another child (tests/e2e/test_pending_training.py follows that training to its
end on tiny configs). The tests' tiny random encoder stands in for the default one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from multitask_serve.modelrepo.pending import read_pending
from support.servers import free_port, mts_serve, start, stop
from tests.conftest import SERVER_ENV


def first_run(repo: Path, port: int, encoder: Path, train: bool = False) -> list[str]:
    return [
        *mts_serve(repo, port),
        *("--build-if-missing", "--encoder", str(encoder)),
        *(() if train else ("--no-train",)),
    ]


def mapped_torch(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if "torch" in line.split()[-1]})


def test_a_first_run_builds_in_a_child_and_serves_without_torch_in_memory(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "model-repo"  # does not exist: a clean clone's first `make serve`
    log = tmp_path / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**SERVER_ENV, "MTS_SHUTDOWN_DRAIN_SECONDS": "0"}
    proc = start(first_run(repo, port, tiny_encoder_dir), url, env=env, log=log, timeout=300)
    try:
        assert mapped_torch(proc.pid) == []
        with httpx.Client(base_url=url, timeout=30) as http:
            tasks = {t["task"] for t in http.get("/tasks").json()["tasks"]}
            assert "embed" in tasks
            assert http.post("/predict/embed", json={"inputs": "a goal"}).status_code == 200
        assert mapped_torch(proc.pid) == []
    finally:
        stop(proc)
    # The build's own lines came through the server's output, and it published the repository.
    assert "built " in log.read_text()
    assert (repo / "trunk" / "trunk.json").is_file()
    assert read_pending(repo) is None  # --no-train: nothing to train later


def test_a_first_run_answers_at_once_while_the_default_heads_wait_to_train(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    """What ``make serve`` runs: the answer comes before any training; the default heads are
    listed under ``training`` and stay pending when the server stops."""
    repo = tmp_path / "model-repo"
    log = tmp_path / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**SERVER_ENV, "MTS_SHUTDOWN_DRAIN_SECONDS": "0"}
    command = first_run(repo, port, tiny_encoder_dir, train=True)
    proc = start(command, url, env=env, log=log, timeout=300)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/predict/embed", json={"inputs": "a goal"}).status_code == 200
            listing = http.get("/tasks").json()
            assert {t["task"] for t in listing["tasks"]} == {"embed", "topic-zs", "sentiment-zs"}
            assert [h["task"] for h in listing["training"]] == ["sentiment", "topic", "ner"]
        assert mapped_torch(proc.pid) == []
    finally:
        stop(proc)
    assert proc.returncode == 0
    pending = read_pending(repo)
    assert pending is not None and pending.tasks == ["sentiment", "topic", "ner"]


def test_a_failed_first_build_ends_the_command_with_a_clear_message(tmp_path: Path) -> None:
    repo = tmp_path / "model-repo"
    missing = tmp_path / "no-such-encoder"
    done = subprocess.run(
        first_run(repo, free_port(), missing), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mts serve: building {repo} failed (mts build exited with "), last
    assert not (repo / "trunk" / "trunk.json").exists()
