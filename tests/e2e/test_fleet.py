"""The fleet variant run for real: ``mts fleet`` (README) starts a local Ray instance with two
replicas of the service behind Ray Serve's router, from the fleet extra's environment
(``make fleet-setup``: .venv-fleet), on a repository of every head kind. Through the router, as a
client sends them:

1. every answer equals the single-process service's answer for the same request;
2. placement: each task's requests all go to one replica, both replicas hold tasks, and each
   replica has loaded only the heads of the tasks sent to it (budgeted replicas load on demand);
3. batching across tasks inside a replica: pairs of concurrent requests for two tasks placed on
   one replica share trunk runs (fewer runs than requests);
4. a head hot-added through the router reaches both replicas (by their repository poll);
5. SIGTERM stops the fleet, exit status 0.

``pytest -s`` prints each step with its time.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from support.servers import free_port, start, stop
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.integration.residency import add_trained_heads

FLEET_MTS = Path(__file__).resolve().parents[2] / ".venv-fleet" / "bin" / "mts"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TEXTS = ["john scored a great goal in the final", "the bank rates fell", "ok"]
REPLICA = "x-mts-replica"
ROUNDS = 4
# How long Ray takes to learn which replica loaded a task: each replica reports its tasks every
# 0.1 s and the controller passes them on to the routers. A request sent sooner may go to
# another replica, which then loads the head too, and a new task goes to the replica with the
# fewest tasks as last reported (docs/scaling.md, "mts fleet").
SETTLE_S = 1.0


@pytest.fixture
def repo(repo, archives):
    return add_trained_heads(repo, archives)


class Steps:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        now = time.monotonic()
        print(f"[{now - self.start:6.1f} s] {name}: {now - began:.1f} s", flush=True)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.2)


def predict(client: httpx.Client, body: dict[str, Any], task: str | None = None) -> httpx.Response:
    r = client.post(f"/predict/{task}" if task else "/predict", json=body)
    assert r.status_code == 200, r.text
    return r


def from_replica(client: httpx.Client, path: str, replica: str, **kw: Any) -> httpx.Response:
    """GET ``path`` (a route naming no task: any replica) until ``replica`` answers it."""
    for _ in range(200):
        r = client.get(path, **kw)
        if r.headers[REPLICA] == replica:
            return r
    raise AssertionError(f"{replica} never answered {path}")


def trunk_runs(metrics: str) -> float:
    found = re.findall(r"^mts_trunk_runs_total(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    assert found, "no mts_trunk_runs_total in /metrics"
    return sum(float(v) for v in found)


def fleet_command(repo: Path, port: int, *flags: str) -> list[str]:
    if not FLEET_MTS.exists():
        pytest.fail(f"{FLEET_MTS} is missing: `make fleet-setup` installs the fleet extra there")
    command = [str(FLEET_MTS), "fleet", "--repo", str(repo), "--port", str(port)]
    return [*command, "--replicas", "2", "--replica-cpus", "0.5", "--num-cpus", "2", *flags]


def test_two_replicas_behind_ray_serve_place_route_batch_and_hot_add(repo, tmp_path):
    steps = Steps()
    reference = create_app(make_settings(repo), CollectorRegistry())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "MTS_ADMIN_TOKEN": ADMIN_TOKEN,
        "MTS_INTRA_OP_THREADS": "1",
        "MTS_REPOSITORY_POLL_SECONDS": "0.5",
        # Budgeted: a replica loads a head when a request for it arrives, so what a replica has
        # loaded is what was sent to it. Every tiny head fits.
        "MTS_HEAD_MEMORY_MB": "64",
        # A batch waits for company, so that two requests sent together share a trunk run.
        "MTS_BATCH_MAX_WAIT_MS": "50",
    }
    command = fleet_command(repo, port)
    with TestClient(reference) as alone, steps("start: Ray, two replicas, router"):
        tasks = [t["task"] for t in alone.get("/tasks").json()["tasks"]]
        expected = {t: alone.post(f"/predict/{t}", json={"inputs": TEXTS}).json() for t in tasks}
        fleet = start(command, url, env=env, log=tmp_path / "fleet.log", timeout=180)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            placed: dict[str, set[str]] = defaultdict(set)
            with steps(f"{ROUNDS} rounds of every task, one at a time, then 8 in flight"):
                for i in range(ROUNDS):
                    for task in tasks:
                        r = predict(client, {"inputs": TEXTS}, task)
                        assert r.json() == expected[task], task
                        placed[task].add(r.headers[REPLICA])
                        if i == 0:  # a task's first request: Ray learns where it was loaded
                            time.sleep(SETTLE_S)
                with ThreadPoolExecutor(8) as pool:
                    calls = [t for _ in range(ROUNDS) for t in tasks]
                    for task, r in zip(
                        calls,
                        pool.map(lambda t: predict(client, {"inputs": TEXTS}, t), calls),
                        strict=True,
                    ):
                        assert r.json() == expected[task], task
                        placed[task].add(r.headers[REPLICA])
            assert all(len(on) == 1 for on in placed.values()), dict(placed)
            holder = {task: next(iter(on)) for task, on in placed.items()}
            replicas = sorted(set(holder.values()))
            assert len(replicas) == 2, holder
            print(f"           placement: {holder}", flush=True)

            with steps("each replica has loaded only the heads sent to it"):
                for replica in replicas:
                    listed = from_replica(client, "/tasks", replica, params={"loaded": True})
                    loaded = {t["task"] for t in listed.json()["tasks"]}
                    sent = {t for t, on in holder.items() if on == replica}
                    assert loaded == sent, (replica, loaded, sent)

            with steps("pairs of requests for two tasks of one replica share trunk runs"):
                replica = max(replicas, key=lambda r: list(holder.values()).count(r))
                a, b = [t for t, on in holder.items() if on == replica][:2]
                before = trunk_runs(from_replica(client, "/metrics", replica).text)
                pairs = 10
                with ThreadPoolExecutor(2) as pool:
                    for _ in range(pairs):
                        answers = list(
                            pool.map(lambda t: predict(client, {"inputs": TEXTS[:1]}, t), [a, b])
                        )
                        assert {r.headers[REPLICA] for r in answers} == {replica}
                runs = trunk_runs(from_replica(client, "/metrics", replica).text) - before
                print(f"           {2 * pairs} requests for {a} and {b}: {runs:.0f} trunk runs")
                assert before > 0 and 0 < runs <= 1.5 * pairs, (before, runs)
                # and one request naming both is answered as each task alone
                both = predict(client, {"inputs": TEXTS, "tasks": [a, b]}).json()
                assert both == {a: expected[a], b: expected[b]}

            with steps("a head hot-added through the router reaches both replicas"):
                labels = {"labels": ["good news", "bad news"]}
                r = client.post("/admin/heads/mood/zero-shot", json=labels, headers=ADMIN)
                assert r.status_code == 201, r.text
                firsts = {
                    replica: next(t for t, on in holder.items() if on == replica)
                    for replica in replicas
                }
                answers: dict[str, Any] = {}

                def served_on(replica: str) -> bool:
                    body = {"inputs": TEXTS, "tasks": [firsts[replica], "mood"]}
                    r = client.post("/predict", json=body)
                    if r.status_code != 200:
                        return False
                    assert r.headers[REPLICA] == replica
                    answers[replica] = r.json()["mood"]
                    return True

                for replica in replicas:
                    eventually(lambda replica=replica: served_on(replica))
                assert answers[replicas[0]] == answers[replicas[1]]
    finally:
        with steps("SIGTERM: the fleet stops"):
            stop(fleet, timeout=60)
    assert fleet.returncode == 0, (tmp_path / "fleet.log").read_text()[-3000:]


def test_without_the_router_the_header_places_each_task_on_one_replica(repo, tmp_path):
    """``mts fleet --no-router``: Ray's proxy routes by the task the client names in Ray's
    ``serve_multiplexed_model_id`` header; a request without it goes to any replica."""
    reference = create_app(make_settings(repo), CollectorRegistry())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"MTS_INTRA_OP_THREADS": "1", "MTS_HEAD_MEMORY_MB": "64"}
    with TestClient(reference) as alone:
        tasks = [t["task"] for t in alone.get("/tasks").json()["tasks"]]
        expected = {t: alone.post(f"/predict/{t}", json={"inputs": TEXTS}).json() for t in tasks}
    command = fleet_command(repo, port, "--no-router")
    fleet = start(command, url, env=env, log=tmp_path / "fleet.log", timeout=180)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            placed: dict[str, set[str]] = defaultdict(set)
            for i in range(ROUNDS):
                for task in tasks:
                    header = {"serve_multiplexed_model_id": task}
                    r = client.post(f"/predict/{task}", json={"inputs": TEXTS}, headers=header)
                    assert r.status_code == 200 and r.json() == expected[task], r.text
                    placed[task].add(r.headers[REPLICA])
                    if i == 0:
                        time.sleep(SETTLE_S)
            assert all(len(on) == 1 for on in placed.values()), dict(placed)
            assert len({next(iter(on)) for on in placed.values()}) == 2, dict(placed)
            r = client.post(f"/predict/{tasks[0]}", json={"inputs": TEXTS})
            assert r.status_code == 200 and r.json() == expected[tasks[0]]
    finally:
        stop(fleet, timeout=60)
    assert fleet.returncode == 0
