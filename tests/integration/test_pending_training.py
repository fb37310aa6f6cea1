"""Pending heads trained while the service answers: the follower (service/pending.py) against a
scripted child that speaks ``mts train-pending``'s events and writes real head archives.

The child replays a scenario (events, archives from tests/factories.py, gates the test opens), so
each case runs in seconds; tests/e2e/test_pending_training.py runs the real training child.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.pending import Pending, PendingHead, read_pending, write_pending
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.app import create_app
from multitask_serve.training.config import TrainConfig
from multitask_serve.training.loop import Listener
from multitask_serve.training.train import train
from tests.conftest import make_settings

CHILD = """
import json, os, shutil, sys, time
from pathlib import Path

scenario = Path(sys.argv[1])
out = Path(sys.argv[sys.argv.index("--out") + 1])
(scenario.parent / "child.pid").write_text(str(os.getpid()))
for step in json.loads(scenario.read_text()):
    if "wait" in step:
        deadline = time.monotonic() + 60
        while not Path(step["wait"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    elif "exit" in step:
        sys.exit(step["exit"])
    else:
        event = dict(step["emit"])
        source = event.pop("archive_from", None)
        if source:
            target = out / (event["task"] + ".tar.gz")
            shutil.copy(source, target)
            event["archive"] = str(target)
        print(json.dumps(event), flush=True)
"""


def plan(*tasks: str) -> Pending:
    return Pending(tuple(PendingHead(t, {"task": t, "data": t}) for t in tasks))


class Child:
    """The scripted child's files: its scenario, gates and the archives it hands over."""

    def __init__(self, directory: Path, archives: dict[str, bytes]) -> None:
        self.dir = directory
        self.dir.mkdir()
        self.script = self.dir / "child.py"
        self.script.write_text(CHILD)
        self.archives = archives

    def command(self, steps: list[dict[str, Any]]) -> list[str]:
        scenario = self.dir / "scenario.json"
        scenario.write_text(json.dumps(steps))
        return [sys.executable, str(self.script), str(scenario)]

    def trained(self, task: str, archive: str | None = None) -> dict[str, Any]:
        path = self.dir / f"{archive or task}.tar.gz"
        path.write_bytes(self.archives[archive or task])
        event = {"event": "trained", "task": task, "archive_from": str(path)}
        return {"emit": event | {"train_seconds": 1.0, "test": {"macro_f1": 0.5}}}

    def gate(self, name: str) -> Path:
        return self.dir / name

    @property
    def pid(self) -> int:
        return int((self.dir / "child.pid").read_text())


def emit(event: str, task: str, **fields: Any) -> dict[str, Any]:
    return {"emit": {"event": event, "task": task, **fields}}


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        time.sleep(0.05)


@pytest.fixture
def child(tmp_path: Path, archives: dict[str, bytes]) -> Child:
    return Child(tmp_path / "child", archives)


@pytest.fixture
def serving(repo: Path) -> Iterator[Callable[[list[str]], TestClient]]:
    """A service for ``repo`` that trains its pending heads with the given child command."""
    clients: list[TestClient] = []

    def start(command: list[str]) -> TestClient:
        app = create_app(make_settings(repo), CollectorRegistry(), train_pending=command)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def training(client: TestClient) -> list[dict[str, Any]]:
    return list(client.get("/tasks").json()["training"])


def served(client: TestClient) -> set[str]:
    return {t["task"] for t in client.get("/tasks").json()["tasks"]}


def test_pending_heads_show_their_progress_and_are_served_one_by_one_when_trained(
    repo: Path, child: Child, serving: Callable[[list[str]], TestClient]
) -> None:
    write_pending(repo, plan("sentiment", "topic"))
    client = serving(
        child.command(
            [
                emit("training", "sentiment"),
                emit("step", "sentiment", epoch=1, epochs=2, step=3, steps=10),
                emit("epoch", "sentiment", epoch=1, epochs=2, loss=0.7, validation=0.6),
                {"wait": str(child.gate("go"))},
                child.trained("sentiment"),
                emit("training", "topic"),
                {"wait": str(child.gate("topic"))},
                child.trained("topic"),
            ]
        )
    )
    now = wait_for(lambda: [h for h in training(client) if h["epoch"] == 1 and h["loss"]])
    assert now[0]["task"] == "sentiment" and now[0]["state"] == "training"
    assert (now[0]["epochs"], now[0]["step"], now[0]["steps"]) == (2, 3, 10)
    assert now[0]["validation"] == 0.6 and now[0]["error"] is None
    assert [(h["task"], h["state"]) for h in training(client)][1] == ("topic", "waiting")
    # Meanwhile the training-free heads answer.
    assert client.post("/predict/embed", json={"inputs": "a goal"}).status_code == 200
    assert client.post("/predict/sentiment", json={"inputs": "a goal"}).status_code == 404

    child.gate("go").touch()
    wait_for(lambda: "sentiment" in served(client))
    assert client.post("/predict/sentiment", json={"inputs": "a goal"}).status_code == 200
    # Its entry leaves the plan once it is served (then /tasks stops listing it as training):
    # a restart would not train it again.
    wait_for(lambda: [h["task"] for h in training(client)] == ["topic"])
    assert read_pending(repo) == plan("topic")

    child.gate("topic").touch()
    wait_for(lambda: training(client) == [])
    assert "topic" in served(client)
    assert read_pending(repo) is None
    assert not list(repo.glob(".staging-*"))  # the child's archives were cleared


def test_a_failed_training_is_reported_with_its_reason_and_the_others_are_served(
    repo: Path, child: Child, serving: Callable[[list[str]], TestClient]
) -> None:
    write_pending(repo, plan("ner", "sentiment", "topic"))
    reason = "DataError: no-such-file.csv: no such file"
    client = serving(
        child.command(
            [
                emit("training", "ner"),
                emit("failed", "ner", error=reason),
                emit("training", "sentiment"),
                # Trained against another trunk: refused by the admin API's checks.
                child.trained("sentiment", archive="foreign"),
                emit("training", "topic"),
                child.trained("topic"),
            ]
        )
    )
    wait_for(lambda: [h["task"] for h in training(client)] == ["ner", "sentiment"])
    assert "topic" in served(client)
    states = {h["task"]: (h["state"], h["error"]) for h in training(client)}
    assert states["ner"] == ("failed", reason)
    state, error = states["sentiment"]
    assert state == "failed" and error.startswith("trained, but refused: head 'sentiment' was")
    assert "trained against trunk" in error
    assert not {"ner", "sentiment"} & served(client)
    # What failed stays pending, for a restart to try again.
    assert read_pending(repo) == plan("ner", "sentiment")


def test_a_child_that_dies_leaves_what_it_had_not_finished_failed_and_pending(
    repo: Path, child: Child, serving: Callable[[list[str]], TestClient]
) -> None:
    write_pending(repo, plan("sentiment", "topic"))
    client = serving(child.command([emit("training", "sentiment"), {"exit": 3}]))
    wait_for(lambda: all(h["state"] == "failed" for h in training(client)))
    for head in training(client):
        assert head["error"] == "the training process exited with status 3 before it"
    assert read_pending(repo) == plan("sentiment", "topic")


def test_a_pending_head_the_repository_already_serves_is_not_trained_again(
    repo: Path, child: Child, serving: Callable[[list[str]], TestClient], archives
) -> None:
    """A crash between adding a head and removing its entry leaves both: the head wins."""
    from multitask_serve.modelrepo.archive import unpack_head

    ModelRepository(repo).add_head(*unpack_head(archives["sentiment"], 1 << 30))
    write_pending(repo, plan("sentiment", "topic"))
    client = serving(child.command([emit("training", "topic"), {"wait": str(child.gate("x"))}]))
    assert [h["task"] for h in training(client)] == ["topic"]
    assert read_pending(repo) == plan("topic")
    versions = client.get("/admin/heads/sentiment/versions", headers=_admin()).json()
    assert versions["current"] == 1


def test_stopping_the_service_stops_the_training_child(
    repo: Path, child: Child, serving: Callable[[list[str]], TestClient]
) -> None:
    write_pending(repo, plan("sentiment"))
    client = serving(
        child.command([emit("training", "sentiment"), {"wait": str(child.gate("never"))}])
    )
    wait_for(lambda: training(client)[0]["state"] == "training")
    pid = child.pid
    client.__exit__(None, None, None)
    wait_for(lambda: not _alive(pid), timeout=15)
    assert read_pending(repo) == plan("sentiment")  # still pending for the next start


def test_without_a_plan_nothing_trains_and_tasks_lists_no_training(
    repo: Path, child: Child, serving: Callable[[list[str]], TestClient]
) -> None:
    client = serving(child.command([{"exit": 9}]))
    assert training(client) == []
    assert not (child.dir / "child.pid").exists()


def test_a_training_run_tells_its_listener_each_step_and_epoch(tiny_encoder, tmp_path) -> None:
    data = tmp_path / "s.csv"
    rows = [f"the film was {w} {i},{lab}" for i in range(40) for w, lab in (("good", "p"),)]
    rows += [f"the film was {w} {i},{lab}" for i in range(40) for w, lab in (("bad", "n"),)]
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    steps: list[tuple[int, int, int, int]] = []
    epochs: list[tuple[int, int, float]] = []
    listener = Listener(
        step=lambda *a: steps.append(a), epoch=lambda e, n, r: epochs.append((e, n, r["loss"]))
    )
    config = TrainConfig(
        task="r", data=str(data), strategy="top-1", epochs=2, max_length=16, patience=None
    )
    result = train(config, tiny_encoder, listener=listener)
    per_epoch = len(steps) // 2
    assert steps[:per_epoch] == [(1, 2, i, per_epoch) for i in range(1, per_epoch + 1)]
    assert steps[-1] == (2, 2, per_epoch, per_epoch)
    assert [(e, n) for e, n, _ in epochs] == [(1, 2), (2, 2)]
    assert [loss for *_, loss in epochs] == [h["loss"] for h in result.history]


def _admin() -> dict[str, str]:
    from tests.conftest import ADMIN_TOKEN

    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z" and os.path.exists(f"/proc/{pid}")
