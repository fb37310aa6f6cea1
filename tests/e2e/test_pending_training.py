"""A first run trains its heads while it serves: ``mts serve --build-if-missing`` on a repository
whose plan (pending-heads.json) lists heads to train, with the real ``mts train-pending`` child.

The plan holds tiny configs on tiny files (the default heads train for minutes), so each head
trains in a second or two on the tests' random encoder; the plan names that encoder, as a
``--train-later`` build with ``--encoder`` records it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from multitask_serve.modelrepo.pending import read_pending, write_pending
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.training.config import TrainConfig
from support.servers import free_port, mts_serve, start, stop
from tests.conftest import ADMIN_TOKEN, SERVER_ENV
from tests.e2e.test_first_run import mapped_torch

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def reviews_csv(path: Path, rows: int) -> Path:
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(rows):
        label = "pos" if i % 2 else "neg"
        word = rng.choice(["good", "great", "love"] if label == "pos" else ["bad", "awful", "hate"])
        lines.append(f"the {rng.choice(['film', 'show', 'match'])} was {word} {i},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tags_conll(path: Path) -> Path:
    rng = random.Random(1)
    sentences = [
        f"{rng.choice(['john', 'mary'])}\tB-PER\nsaw\tO\n{rng.choice(['paris', 'london'])}\tB-LOC\n"
        for _ in range(80)
    ]
    path.write_text("\n".join(sentences))
    return path


def with_plan(repo: Path, encoder_dir: Path, heads: list[TrainConfig]) -> Path:
    """``repo`` (the tests' built repository) with ``heads`` pending, as a ``--train-later``
    build with ``--encoder encoder_dir`` leaves it."""
    from multitask_serve.training.pending import plan

    write_pending(repo, plan(heads, str(encoder_dir)))
    return repo


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    reviews_csv(directory / "reviews.csv", 200)
    tags_conll(directory / "tags.conll")
    return directory


def serve(repo: Path, log: Path, *flags: str) -> tuple[Any, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*mts_serve(repo, port), "--build-if-missing", *flags]
    env = {**SERVER_ENV, "MTS_SHUTDOWN_DRAIN_SECONDS": "0"}
    return start(command, url, env=env, log=log, timeout=300), url


def training(http: httpx.Client) -> list[dict[str, Any]]:
    return list(http.get("/tasks").json()["training"])


def served(http: httpx.Client) -> dict[str, int]:
    return {t["task"]: t["version"] for t in http.get("/tasks").json()["tasks"]}


def wait_for(check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(0.1)
    return value


def trainer_pid(server_pid: int) -> int | None:
    """The server's ``mts train-pending`` child, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == server_pid and b"train-pending" in cmdline and stat[0] != "Z":
            return int(entry.name)
    return None


def gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_service_answers_while_heads_train_and_serves_each_when_trained(
    repo: Path, tiny_encoder_dir: Path, data: Path, tmp_path: Path
) -> None:
    reviews, tags = str(data / "reviews.csv"), str(data / "tags.conll")
    heads = [
        TrainConfig("reviews", reviews, "top-1", epochs=4, max_length=16, patience=None),
        TrainConfig("broken", str(data / "missing.csv"), "top-1"),
        TrainConfig("tags", tags, "top-1", epochs=2, max_length=16),
    ]
    with_plan(repo, tiny_encoder_dir, heads)
    log = tmp_path / "server.log"
    proc, url = serve(repo, log)
    seen: set[tuple[str, str]] = set()
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            # At once: the training-free heads answer, the trained ones are pending.
            assert http.post("/predict/embed", json={"inputs": "a goal"}).status_code == 200
            assert {h["task"] for h in training(http)} == {"reviews", "broken", "tags"}

            def settled() -> bool:
                heads = training(http)
                seen.update((h["task"], h["state"]) for h in heads)
                return [h["task"] for h in heads] == ["broken"]

            wait_for(settled)
            assert ("reviews", "training") in seen or ("tags", "training") in seen
            [broken] = training(http)
            assert broken["state"] == "failed"
            assert broken["error"] == f"DataError: {data / 'missing.csv'}: no such file"
            answer = http.post("/predict/reviews", json={"inputs": "the film was great"})
            assert answer.status_code == 200 and answer.json()["outputs"]["label"] in {"pos", "neg"}
            tags = http.post("/predict/tags", json={"inputs": "john saw paris"})
            assert tags.status_code == 200 and isinstance(tags.json()["outputs"], list)
            assert served(http)["reviews"] == 1
            assert mapped_torch(proc.pid) == []  # torch stayed in the child
    finally:
        stop(proc)
    assert proc.returncode == 0
    # Stored as `mts build` stores a trained head: the run's config in head.json.
    stored = ModelRepository(repo).read_head("reviews").spec
    assert stored.training["config"] == dataclasses.asdict(heads[0])
    text = log.read_text()
    assert "training reviews: epoch 1/4" in text
    assert "training broken failed: DataError:" in text
    pending = read_pending(repo)
    assert pending is not None and pending.tasks == ["broken"]  # what failed stays pending


def test_a_restart_trains_only_what_is_missing_and_never_what_was_deleted(
    repo: Path, tiny_encoder_dir: Path, data: Path, tmp_path: Path
) -> None:
    heads = [
        TrainConfig(task="quick", data=str(data / "reviews.csv"), strategy="head-only", epochs=1),
        # Long enough to be interrupted: hundreds of short epochs.
        TrainConfig("slow", str(data / "reviews.csv"), "top-1", epochs=500, patience=None),
    ]
    with_plan(repo, tiny_encoder_dir, heads)
    log = tmp_path / "server.log"

    # First start: quick is served, slow trains; then the server is killed outright.
    proc, url = serve(repo, log)
    with httpx.Client(base_url=url, timeout=30) as http:
        wait_for(lambda: "quick" in served(http) and training(http)[0]["state"] == "training")
    child = wait_for(lambda: trainer_pid(proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: gone(child), timeout=15)  # its stdin closed: the child ended itself
    pending = read_pending(repo)
    assert pending is not None and pending.tasks == ["slow"]
    shutil.rmtree(next(repo.glob(".staging-train-*")))  # what kill -9 left (swept after 10 min)

    # Second start: only slow trains; quick is the version the first start stored.
    proc, url = serve(repo, log)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert [h["task"] for h in training(http)] == ["slow"]
        assert served(http)["quick"] == 1
        assert http.delete("/admin/heads/quick", headers=ADMIN).status_code == 200
        wait_for(lambda: training(http)[0]["state"] == "training")
    child = wait_for(lambda: trainer_pid(proc.pid))
    stop(proc)  # SIGTERM: a clean shutdown stops the child first
    assert proc.returncode == 0
    assert gone(child)
    assert not list(repo.glob(".staging-train-*"))

    # Third start: the deleted head does not come back.
    proc, url = serve(repo, log)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert [h["task"] for h in training(http)] == ["slow"]
            assert "quick" not in served(http)
    finally:
        stop(proc)
    assert "stopped training; still pending for the next start: slow" in log.read_text()
    assert os.path.exists(repo / "pending-heads.json")


def test_no_train_leaves_the_pending_heads_pending(
    repo: Path, tiny_encoder_dir: Path, data: Path, tmp_path: Path
) -> None:
    heads = [TrainConfig(task="quick", data=str(data / "reviews.csv"), strategy="head-only")]
    with_plan(repo, tiny_encoder_dir, heads)
    log = tmp_path / "server.log"
    proc, url = serve(repo, log, "--no-train")
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert training(http) == []
            assert trainer_pid(proc.pid) is None
    finally:
        stop(proc)
    assert "--no-train leaves them pending" in log.read_text()
