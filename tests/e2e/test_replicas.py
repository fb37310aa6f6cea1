"""Two service processes on one repository, and requests in flight while heads change."""

from __future__ import annotations

import threading
import time

import httpx

from support.servers import serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBES = ["john scored a great goal in the final", "the bank rates fell", "ok"]


def eventually(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "replica did not converge in time"
        time.sleep(0.1)


def test_two_processes_on_one_repository_converge_and_survive_a_restart(repo, archives, tmp_path):
    poll = {**SERVER_ENV, "MTS_REPOSITORY_POLL_SECONDS": "0.2"}
    with (
        serving(repo, tmp_path / "a.log", poll) as a,
        serving(repo, tmp_path / "b.log", poll) as b,
    ):
        assert (
            httpx.post(f"{a}/admin/heads/ner", content=archives["ner"], headers=ADMIN).status_code
            == 201
        )
        started = time.monotonic()
        eventually(
            lambda: httpx.post(f"{b}/predict/ner", json={"inputs": PROBES}).status_code == 200
        )
        print(f"added through A, served by B after {time.monotonic() - started:.2f} s")
        same = lambda task: (  # noqa: E731
            httpx.post(f"{a}/predict/{task}", json={"inputs": PROBES}).json()
            == httpx.post(f"{b}/predict/{task}", json={"inputs": PROBES}).json()
        )
        assert same("ner")
        assert httpx.delete(f"{a}/admin/heads/topic-zs", headers=ADMIN).status_code == 200
        eventually(
            lambda: httpx.post(f"{b}/predict/topic-zs", json={"inputs": "x"}).status_code == 404
        )
        before = httpx.post(f"{b}/predict/ner", json={"inputs": PROBES}).json()
    # Restart both: nothing acknowledged is lost.
    with (
        serving(repo, tmp_path / "a2.log", SERVER_ENV) as a,
        serving(repo, tmp_path / "b2.log", SERVER_ENV) as b,
    ):
        for url in (a, b):
            tasks = {t["task"] for t in httpx.get(f"{url}/tasks").json()["tasks"]}
            assert tasks == {"embed", "ner"}
            assert httpx.post(f"{url}/predict/ner", json={"inputs": PROBES}).json() == before


def test_requests_in_flight_while_heads_change_all_succeed_with_identical_outputs(server, archives):
    baseline = {
        task: httpx.post(f"{server}/predict/{task}", json={"inputs": PROBES}).json()
        for task in ("embed", "topic-zs")
    }
    stop = threading.Event()
    failures: list[str] = []
    counts = [0]

    def hammer(task: str) -> None:
        with httpx.Client(base_url=server, timeout=30) as http:
            while not stop.is_set():
                r = http.post(f"/predict/{task}", json={"inputs": PROBES})
                counts[0] += 1
                if r.status_code != 200 or r.json() != baseline[task]:
                    failures.append(f"{task}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=hammer, args=(t,)) for t in ("embed", "topic-zs", "embed")]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=server, timeout=60, headers=ADMIN) as admin:
            steps = [
                admin.post("/admin/heads/sentiment", content=archives["sentiment"]),
                admin.post("/admin/heads/sentiment?replace=true", content=archives["sentiment-v2"]),
                admin.post("/admin/heads/sentiment/rollback"),
                admin.post("/admin/heads/ner", content=archives["ner"]),
                admin.delete("/admin/heads/sentiment"),
                admin.delete("/admin/heads/ner"),
            ]
            assert [r.status_code for r in steps] == [201, 201, 200, 201, 200, 200]
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"{counts[0]} requests in flight during 6 head changes, {len(failures)} failed")
    assert counts[0] > 10 and failures == []
