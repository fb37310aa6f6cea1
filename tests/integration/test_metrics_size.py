"""/metrics stays small as tasks grow: at 1,000 served tasks that all had traffic, every one of them
answered and failed at least once, the scrape is at most 256 KiB (service/metrics.py says which
series are per task, and why).

The tasks' series come from the real paths: heads stored in the repository and loaded by the app,
one request through the batcher for every task (request counter and latency, each head's time),
then one that fails for every task (the error counter). Names take the 64 characters a task name
may have, so the bound holds whatever the names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.app import create_app
from tests.conftest import make_settings

TASKS = 1000
MAX_SCRAPE_BYTES = 256 * 1024


def task_name(i: int) -> str:
    return f"t{i:04d}-".ljust(64, "x")  # the longest name a task may have


def samples(registry: CollectorRegistry) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Sample name -> label set -> value, from one collection (get_sample_value collects the whole
    registry for each value it reads: 2,000 reads of a 1,000-task registry take a minute)."""
    found: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def scrape(client: TestClient) -> bytes:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.content


def every_task_answers_then_fails(client: TestClient) -> list[str]:
    """One request for every served task, answered; then one more that fails for every task."""
    tasks = [t["task"] for t in client.get("/tasks").json()["tasks"]]
    answered = client.post("/predict", json={"inputs": "the bank rates fell", "tasks": tasks})
    assert answered.status_code == 200, answered.text[:500]
    worker = client.app.state.services.predictor.batcher._worker

    async def stop_the_worker() -> None:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await asyncio.sleep(0)  # the worker's done callbacks have run

    client.portal.call(stop_the_worker)
    failed = client.post("/predict", json={"inputs": "the bank rates fell", "tasks": tasks})
    assert failed.status_code == 503, failed.text[:500]
    return tasks


def test_a_scrape_at_1000_tasks_that_all_had_traffic_is_at_most_256_kib(
    repo: Path, monkeypatch: pytest.MonkeyPatch
):
    with TestClient(create_app(make_settings(repo), CollectorRegistry())) as client:
        base_tasks = every_task_answers_then_fails(client)
        base = len(scrape(client))
    store = ModelRepository(repo)
    stored = [store.read_head(task) for task in base_tasks]  # one embedding, one zero-shot head
    models = [head.model_path.read_bytes() for head in stored]
    with monkeypatch.context() as writes:
        # Durability is not what this test checks: without fsync 1,000 writes take 3 s, not 20.
        writes.setattr(os, "fsync", lambda fd: None)
        for i in range(TASKS):
            head, model = stored[i % len(stored)], models[i % len(stored)]
            store.add_head(dataclasses.replace(head.spec, task=task_name(i)), model)

    app = create_app(make_settings(repo), CollectorRegistry())
    with TestClient(app) as client:
        tasks = every_task_answers_then_fails(client)
        size = len(scrape(client))
    assert len(tasks) == TASKS + len(base_tasks)
    # Every task went through the labelled paths: its series exist, so the size is the real one.
    found = samples(app.state.services.metrics.registry)
    for task in tasks:
        for outcome in ("ok", "error"):
            labels = frozenset({"task": task, "outcome": outcome}.items())
            assert found["mts_requests_total"].get(labels) == 1, labels
    assert sum(found["mts_request_duration_seconds_count"].values()) == len(tasks)
    assert sum(found["mts_head_duration_seconds_count"].values()) >= len(tasks)  # each head ran
    per_task = (size - base) / TASKS
    print(
        f"/metrics: {base} B at {len(base_tasks)} tasks, {size} B ({size / 1024:.1f} KiB) at "
        f"{len(tasks)}: {per_task:.0f} B per task (64-character names, ok and error)"
    )
    assert size <= MAX_SCRAPE_BYTES, f"{size} B at {len(tasks)} tasks: {per_task:.0f} B per task"
