"""Micro-batching: concurrent requests for different tasks share one trunk run, and a text's
outputs inside a mixed batch match its outputs alone within the stated tolerance."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.archive import unpack_head
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.app import create_app
from multitask_serve.service.batcher import Batcher
from multitask_serve.service.errors import Overloaded
from multitask_serve.service.types import Job
from tests.conftest import make_settings
from tests.factories import WORDS

TEXTS = ["john scored a great goal in the final match at paris", "ok", "the bank rates fell"]


def flat(outputs) -> np.ndarray:
    values = []
    for out in outputs:
        values.extend(out if isinstance(out, list) else out["scores"].values())
    return np.array(values, dtype=np.float64)


def test_concurrent_requests_for_different_tasks_share_one_trunk_run(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    engine, metrics = app.state.services.engine, app.state.services.metrics
    heads = app.state.services.registry.loaded(["embed", "topic-zs"])
    alone = {
        (task, text): engine.predict({task: heads[task]}, [text])[0][task].outputs
        for task in heads
        for text in TEXTS
    }
    runs = metrics.registry.get_sample_value
    before = runs("mts_trunk_runs_total")

    async def main():
        batcher = Batcher(
            engine, metrics, max_texts=32, max_tokens=8192, max_wait_s=0.2, max_length=64
        )
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit({task: heads[task]}, [text]) for task in heads for text in TEXTS)
            )
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert runs("mts_trunk_runs_total") - before == 1
    assert runs("mts_batch_texts_count") >= 1
    diffs = []
    for (task, text), done in zip(((t, x) for t in heads for x in TEXTS), results, strict=True):
        assert done.results[task].task == task
        diffs.append(np.max(np.abs(flat(done.results[task].outputs) - flat(alone[task, text]))))
    print(f"alone vs inside a mixed batch of 6 requests: max abs diff {max(diffs):.2e}")
    assert max(diffs) <= 1e-5


def test_a_small_request_alone_runs_on_the_event_loop_and_requests_read_together_share_a_batch(
    repo, monkeypatch
):
    app = create_app(make_settings(repo), CollectorRegistry())
    engine, metrics = app.state.services.engine, app.state.services.metrics
    heads = app.state.services.registry.loaded(["embed", "topic-zs"])
    runs: list[tuple[str, int]] = []  # (thread, jobs) per batch the engine ran
    predict_many = engine.predict_many

    def spy(jobs):
        runs.append((threading.current_thread().name, len(jobs)))
        return predict_many(jobs)

    monkeypatch.setattr(engine, "predict_many", spy)
    # Over 256 estimated tokens (characters / 4), and a few windows of the tiny trunk's 64.
    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(300))

    def batches(requests, max_wait_s=0.0, inline=256):
        async def main():
            # 32 texts, 8192 tokens, the wait, 512 tokens per text at most
            batcher = Batcher(engine, metrics, 32, 8192, max_wait_s, 512, 1024, 0.0, None, inline)
            batcher.start()
            try:
                await asyncio.gather(*(batcher.submit({t: heads[t]}, [x]) for t, x in requests))
            finally:
                await batcher.stop()

        runs.clear()
        asyncio.run(main())
        return list(runs)

    loop, worker = threading.current_thread().name, "inference_0"  # asyncio.run's loop is here
    one = [("embed", "ok")]
    six = [(task, text) for task in heads for text in TEXTS]
    assert batches(one) == [(loop, 1)]
    assert batches(six) == [(worker, 6)]  # read together: one batch, through the worker
    assert batches([("embed", long_text)]) == [(worker, 1)]  # past the bound
    assert batches(one, max_wait_s=0.01) == [(worker, 1)]  # a wait asks for bigger batches
    assert batches(one, inline=0) == [(worker, 1)]


def test_a_request_larger_than_a_batch_is_split_and_reassembled_in_order(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    engine, metrics = app.state.services.engine, app.state.services.metrics
    heads = app.state.services.registry.loaded(["embed"])
    texts = [f"text number {i}" for i in range(7)]
    whole = engine.predict(heads, texts)[0]["embed"].outputs

    async def main():
        batcher = Batcher(
            engine, metrics, max_texts=3, max_tokens=8192, max_wait_s=0, max_length=64
        )
        batcher.start()
        try:
            return await batcher.submit(heads, texts)
        finally:
            await batcher.stop()

    done = asyncio.run(main())
    assert len(done.results["embed"].outputs) == 7 and done.truncated == [False] * 7
    assert np.max(np.abs(np.array(done.results["embed"].outputs) - np.array(whole))) <= 1e-5


def test_beyond_the_queue_bound_requests_are_refused_at_once(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    engine, metrics = app.state.services.engine, app.state.services.metrics
    heads = app.state.services.registry.loaded(["embed"])

    async def main():
        batcher = Batcher(
            engine,
            metrics,
            max_texts=32,
            max_tokens=8192,
            max_wait_s=0,
            max_length=64,
            max_queued_texts=4,
        )
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(heads, ["a", "b"]) for _ in range(5)), return_exceptions=True
            )
        finally:
            await batcher.stop()

    outcomes = asyncio.run(main())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    served = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(served) == 2 and len(refused) == 3  # 2 x 2 texts fit under the bound of 4


def spans(outputs):
    return [[(e["entity"], e["start"], e["end"]) for e in entities] for entities in outputs]


def test_length_groups_give_the_outputs_of_one_padded_batch(repo, archives):
    store = ModelRepository(repo)
    for name in ("sentiment", "topic", "ner"):
        store.add_head(*unpack_head(archives[name], 1 << 30))
    texts = [
        "ok",
        "the bank raised rates " * 12,
        "a goal",
        "parliament votes on the climate bill next week in london",
        "hi there",
    ]
    tasks = ["embed", "topic-zs", "sentiment", "topic", "ner"]

    def serve(cost):
        app = create_app(make_settings(repo, batch_group_cost_tokens=cost), CollectorRegistry())
        engine, runs = (
            app.state.services.engine,
            app.state.services.metrics.registry.get_sample_value,
        )
        heads = app.state.services.registry.loaded(tasks)
        jobs = [Job({t: heads[t] for t in tasks[:3]}, texts[:3]), Job(heads, texts[2:])]
        before = runs("mts_trunk_runs_total")
        done = engine.predict_many(jobs)
        return done, runs("mts_trunk_runs_total") - before

    whole, whole_runs = serve(1 << 20)
    grouped, grouped_runs = serve(0)
    assert whole_runs == 1 and grouped_runs > 1
    worst = 0.0
    for a, b in zip(whole, grouped, strict=True):
        assert a.truncated == b.truncated
        for task in a.results:
            x, y = a.results[task].outputs, b.results[task].outputs
            if task == "ner":
                assert spans(x) == spans(y)
                continue
            worst = max(worst, float(np.max(np.abs(flat(x) - flat(y)))))
    print(f"length groups vs one padded batch: max abs diff {worst:.2e}")
    assert worst <= 1e-5


def test_a_request_that_would_wait_past_the_deadline_is_refused_at_the_recent_pace(repo):
    app = create_app(make_settings(repo), CollectorRegistry())
    engine, metrics = app.state.services.engine, app.state.services.metrics
    heads = app.state.services.registry.loaded(["embed"])

    async def main(deadline_in_texts: float):
        batcher = Batcher(
            engine, metrics, max_texts=2, max_tokens=8192, max_wait_s=0, max_length=64
        )
        batcher.start()
        try:
            await batcher.submit(heads, ["a"])  # before this, the pace is unknown
            assert batcher._rows_per_s
            # The deadline, in seconds, that this many texts take at the measured pace.
            batcher._max_queue_wait = deadline_in_texts / batcher._rows_per_s
            return await asyncio.gather(
                *(batcher.submit(heads, ["a", "b"]) for _ in range(6)), return_exceptions=True
            )
        finally:
            await batcher.stop()

    assert all(not isinstance(o, Exception) for o in asyncio.run(main(0)))  # 0: no deadline
    # Requests are admitted while the queue ahead of them, plus their own texts, fits: 2 x 2.
    outcomes = asyncio.run(main(4.5))
    assert [isinstance(o, Overloaded) for o in outcomes] == [False, False] + [True] * 4
    assert "would take" in next(o for o in outcomes if isinstance(o, Overloaded)).message
