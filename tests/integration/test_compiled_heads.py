"""Compiled heads (service/compiled.py): a head loaded from a replica's compiled cache answers bit
for bit as the head it was made from, for every kind and precision; the service uses the cache
for heads loaded again after eviction, falls back to the stored graph when a compiled head is
damaged, and keeps the cache within its size."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.export.quantize import INT8
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import HeadSpec, Kind
from multitask_serve.service.app import create_app
from multitask_serve.service.compiled import STAGING_PREFIX, CompiledHeads
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.sessions import COMPILED_GRAPH, COMPILED_WEIGHTS, CPU, HeadSession
from tests.conftest import TOPIC_LABELS, make_settings
from tests.factories import NER_LABELS, random_head
from tests.integration.residency import (
    ONE_HEAD_MB,
    add_trained_heads,
    answers,
    sample,
)


def _every_head(exporter) -> dict[str, tuple[HeadSpec, bytes]]:
    made = {
        "embedding": exporter.embedding("embed"),
        "zero-shot": exporter.zero_shot("zs", TOPIC_LABELS),
    }
    for kind, labels, k in (
        (Kind.SEQUENCE_CLASSIFICATION, ("a", "b", "c"), 0),
        (Kind.SEQUENCE_CLASSIFICATION, ("a", "b", "c"), 2),
        (Kind.TOKEN_CLASSIFICATION, NER_LABELS, 1),
    ):
        head = random_head(exporter.encoder, kind, len(labels), k=k, seed=k + 3)
        for precision in ("fp32", INT8) if k else ("fp32",):
            made[f"{kind}-k{k}-{precision}"] = exporter.classification(
                f"h{k}", head, labels, {"strategy": f"top-{k}"}, precision=precision
            )
    return made


def test_a_compiled_head_answers_bit_for_bit_as_its_graph(exporter, tmp_path: Path):
    hidden_size = exporter.encoder.hidden_size
    rng = np.random.default_rng(0)
    shapes = [(1, 3), (4, 9), (7, 16)]
    for name, (spec, model) in _every_head(exporter).items():
        folder = tmp_path / name
        CPU.compile(model, folder)
        assert (folder / COMPILED_GRAPH).is_file(), name
        graph = HeadSession(model, spec.output_name, hidden_size)
        compiled = HeadSession(folder, spec.output_name, hidden_size)
        for batch, length in shapes:
            hidden = rng.standard_normal((batch, length, hidden_size)).astype(np.float32)
            mask = np.ones((batch, length), dtype=np.int64)
            mask[0, length // 2 :] = 0  # padding, as a shorter text in a batch has
            expected = graph.run(hidden, mask)
            assert np.array_equal(compiled.run(hidden, mask), expected), (name, batch, length)


@pytest.fixture
def repo(repo, archives):
    return add_trained_heads(repo, archives)


def _compiled(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith(STAGING_PREFIX))


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_heads_loaded_again_come_from_the_compiled_cache_and_answer_as_before(repo, tmp_path):
    cache = tmp_path / "cache"
    (cache / f"{STAGING_PREFIX}left-by-a-killed-process").mkdir(parents=True)
    everything = create_app(make_settings(repo), CollectorRegistry())
    bounded = create_app(
        make_settings(repo, head_memory_mb=ONE_HEAD_MB, head_cache_dir=cache, head_cache_min_mb=0),
        CollectorRegistry(),
    )
    with TestClient(everything) as full, TestClient(bounded) as small:
        assert not any(cache.iterdir())  # the staging leftover removed at start
        tasks = [t["task"] for t in full.get("/tasks").json()["tasks"]]
        expected = {task: answers(full, task) for task in tasks}
        for task in tasks:  # each loaded from the repository once: not compiled
            assert answers(small, task) == expected[task], task
        time.sleep(0.5)
        assert not _compiled(cache)
        for task in tasks:  # loaded again after its eviction: then compiled in the background
            assert answers(small, task) == expected[task], task
        _wait_for(lambda: len(_compiled(cache)) == len(tasks), "every head compiled")
        misses = sample(small, "mts_head_compiled_lookups_total", {"result": "miss"})
        assert misses == 2 * len(tasks)
        for _ in range(2):  # each evicted by the next: loaded again, from the cache
            for task in tasks:
                assert answers(small, task) == expected[task], task
        hits = sample(small, "mts_head_compiled_lookups_total", {"result": "hit"})
        assert hits == 2 * len(tasks)
        with ThreadPoolExecutor(8) as pool:  # concurrent loads of compiled heads
            calls = [tasks[i % len(tasks)] for i in range(4 * len(tasks))]
            got = list(pool.map(lambda t: answers(small, t), calls))
            for task, answer in zip(calls, got, strict=True):
                assert answer == expected[task], task

        # A damaged compiled head (those whose weights are in a file of their own; the smallest
        # keep them inside the graph): deleted, the stored graph loaded, the answer unchanged,
        # the head not counted as failing, and compiled again.
        damaged = {
            f.name.split("@")[0]: f for f in _compiled(cache) if (f / COMPILED_WEIGHTS).is_file()
        }
        assert {"ner", "topic"} <= set(damaged)
        for folder in damaged.values():
            (folder / COMPILED_WEIGHTS).write_bytes(b"not weights")
        for task in tasks:
            assert answers(small, task) == expected[task], task
        for task in damaged:
            assert sample(small, "mts_head_load_failures_total", {"task": task}) == 0, task

        def mended() -> bool:
            weights = [f / COMPILED_WEIGHTS for f in damaged.values()]
            return all(w.is_file() and w.read_bytes() != b"not weights" for w in weights)

        _wait_for(mended, "damaged heads compiled again")
        for task in tasks:
            assert answers(small, task) == expected[task], task


def test_the_cache_keeps_within_its_size_and_its_temporary_folder_goes_at_shutdown(repo):
    settings = make_settings(repo, head_memory_mb=ONE_HEAD_MB, head_cache_min_mb=0)
    app = create_app(settings, CollectorRegistry())
    registry = app.state.services.registry
    compiled: CompiledHeads = registry._compiled
    assert compiled is not None and compiled.root.name.startswith("mts-compiled-heads-")
    with TestClient(app) as client:
        tasks = [t["task"] for t in client.get("/tasks").json()["tasks"]]
        for task in tasks + tasks:  # compiled at its second load
            answers(client, task)
        _wait_for(lambda: len(_compiled(compiled.root)) == len(tasks), "every head compiled")
        sizes = {p: sum(f.stat().st_size for f in p.iterdir()) for p in _compiled(compiled.root)}
        total = sum(sizes.values())
        _wait_for(lambda: sample(client, "mts_head_compiled_bytes") == total, "the gauge")
    assert not compiled.root.exists()

    # A cap that holds the largest compiled head and little more: the most recently compiled
    # are kept, as many as fit.
    cap = max(sizes.values()) + 2 * min(sizes.values())
    root = repo.parent / "small-cache"
    small = CompiledHeads(
        root, int(cap), CPU, ThreadPoolExecutor(1), Metrics(CollectorRegistry()), 0
    )
    store = ModelRepository(repo)
    for task in tasks:
        stored = store.read_head(task)
        folder = small.folder(task, stored.version, stored.model_path)
        assert folder is not None and not small.find(folder)
        small._compile(folder, stored.model_path.read_bytes)
        time.sleep(0.01)  # distinct mtimes: recency decides
    kept = _compiled(root)
    assert sum(sum(f.stat().st_size for f in p.iterdir()) for p in kept) <= cap
    assert 1 <= len(kept) < len(tasks)
    assert {p.name.split("@")[0] for p in kept} <= set(tasks[-len(kept) :])


def test_no_cache_without_a_budget_or_with_a_size_of_zero(repo):
    for settings in (
        make_settings(repo),
        make_settings(repo, head_memory_mb=ONE_HEAD_MB, head_cache_mb=0),
    ):
        app = create_app(settings, CollectorRegistry())
        assert app.state.services.registry._compiled is None
