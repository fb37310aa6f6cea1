"""Heads loaded on demand within a budget (service/residency.py), with a fake load: one load per
head however many requests want it, loaded heads never wait behind a load, evictions keep the
budget, pinned heads stay, and a load that finishes after its task changed is not kept."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from multitask_serve.service.errors import Unavailable
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.residency import (
    LRU,
    GreedyDualSize,
    LoadedHead,
    Policy,
    Residency,
    ServedHead,
)


def served(task: str, version: int = 1, size: int = 10) -> ServedHead:
    return ServedHead(SimpleNamespace(task=task), version, size)  # type: ignore[arg-type]


class FakeLoads:
    """Loads that count themselves, optionally held until released or made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate: dict[str, threading.Event] = {}
        self.fail: set[str] = set()
        self.current: dict[str, int] = {}
        self.mapped = False

    def __call__(self, head: ServedHead) -> LoadedHead:
        self.calls.append((head.task, head.version))
        gate = self.gate.get(head.task)
        if gate is not None:
            assert gate.wait(10)
        if head.task in self.fail:
            raise Unavailable(f"{head.task} is broken")
        session = object()
        return LoadedHead(head.spec, head.version, head.size, session, mapped=self.mapped)  # type: ignore[arg-type]


def table(
    budget: int | None,
    pinned: tuple[str, ...] | list[str] = (),
    policy: Policy | None = None,
    workers: int = 4,
    heap_trim: str = "resident",
) -> tuple[Residency, FakeLoads, Callable[..., float | None]]:
    loads = FakeLoads()
    metrics = Metrics(CollectorRegistry())
    residency = Residency(
        loads,
        ThreadPoolExecutor(workers),
        metrics,
        budget,
        pinned,
        policy,
        current=lambda task: loads.current.get(task, 1),
        heap_trim=heap_trim,
    )
    return residency, loads, metrics.registry.get_sample_value


def test_concurrent_requests_for_one_head_wait_on_one_load():
    residency, loads, sample = table(None)
    loads.gate["a"] = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(residency.acquire_now, {"a": served("a")}) for _ in range(8)]
        time.sleep(0.1)
        loads.gate["a"].set()
        heads = [w.result(10)["a"] for w in waiting]
    assert loads.calls == [("a", 1)]
    assert all(h is heads[0] for h in heads)
    assert sample("mts_head_lookups_total", {"result": "miss"}) == 8
    residency.acquire_now({"a": served("a")})
    assert loads.calls == [("a", 1)]
    assert sample("mts_head_lookups_total", {"result": "hit"}) == 1


def test_a_loaded_head_never_waits_behind_another_heads_load():
    residency, loads, _ = table(None)
    residency.acquire_now({"b": served("b")})
    loads.gate["a"] = threading.Event()

    async def both() -> float:
        slow = asyncio.create_task(residency.acquire({"a": served("a")}))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await residency.acquire({"b": served("b")})
        took = time.perf_counter() - started
        loads.gate["a"].set()
        await slow
        return took

    assert asyncio.run(both()) < 0.05


def test_loads_evict_to_the_budget_and_never_evict_pinned_heads():
    residency, loads, sample = table(30, pinned=["p"], policy=LRU())
    residency.acquire_now({"p": served("p")})
    for task in "abcdef":
        residency.acquire_now({task: served(task)})
        assert residency.loaded_bytes <= 30
        assert residency.loaded("p") is not None
    assert set(residency.tasks()) == {"p", "e", "f"}
    assert sample("mts_head_evictions_total") == 4
    assert sample("mts_heads_loaded") == 3 and sample("mts_head_loaded_bytes") == 30
    # an evicted head loads again, once
    residency.acquire_now({"a": served("a")})
    assert loads.calls.count(("a", 1)) == 2


def test_room_is_made_before_a_load_starts_and_given_back_when_it_fails():
    residency, loads, sample = table(30, policy=LRU())
    for task in "abc":
        residency.acquire_now({task: served(task)})
    loads.gate["d"] = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(residency.acquire_now, {"d": served("d")})
        deadline = time.monotonic() + 10
        while ("d", 1) not in loads.calls:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # while d loads, its room is already made: the loaded heads and d fit the budget
        assert residency.tasks() == ["b", "c"] and residency.loaded_bytes == 20
        loads.gate["d"].set()
        waiting.result(10)
    assert residency.tasks() == ["b", "c", "d"] and sample("mts_head_evictions_total") == 1
    loads.fail.add("e")
    with pytest.raises(Unavailable):
        residency.acquire_now({"e": served("e")})
    assert residency.loaded_bytes == 20  # b made room for e, and e's room is free again
    residency.acquire_now({"f": served("f")})
    assert residency.tasks() == ["c", "d", "f"] and sample("mts_head_evictions_total") == 2


def test_a_head_larger_than_the_budget_is_loaded_for_its_request_then_evicted_first():
    residency, _, _ = table(30, policy=LRU())
    residency.acquire_now({"a": served("a")})
    big = residency.acquire_now({"big": served("big", size=100)})["big"]
    assert big.size == 100 and residency.tasks() == ["big"]
    residency.acquire_now({"b": served("b")})
    assert residency.tasks() == ["b"]


def test_a_failed_load_fails_its_requests_and_the_next_request_tries_again():
    residency, loads, _ = table(None)
    loads.fail.add("a")
    with pytest.raises(Unavailable, match="a is broken"):
        residency.acquire_now({"a": served("a")})
    loads.fail.clear()
    assert residency.acquire_now({"a": served("a")})["a"].version == 1
    assert loads.calls == [("a", 1), ("a", 1)]


def test_a_load_that_finishes_after_its_task_changed_answers_but_is_not_kept():
    residency, loads, _ = table(None)
    loads.current["a"] = 2  # version 2 is served by the time version 1 has loaded
    head = residency.acquire_now({"a": served("a", version=1)})["a"]
    assert head.version == 1 and residency.loaded("a") is None


def test_a_new_version_replaces_the_loaded_one():
    residency, loads, _ = table(None)
    residency.acquire_now({"a": served("a", version=1)})
    loads.current["a"] = 2
    assert residency.acquire_now({"a": served("a", version=2)})["a"].version == 2
    assert residency.loaded("a", 1) is None and residency.loaded("a", 2) is not None
    assert residency.loaded_bytes == 10


def test_lru_evicts_the_least_recently_used_whatever_its_cost():
    lru = LRU()
    lru.touch("small-slow", 1, 1.0)
    lru.touch("big-fast", 1000, 0.001)
    assert lru.victim(["small-slow", "big-fast"]) == "small-slow"


def test_greedy_dual_size_keeps_what_is_dear_to_load_again_per_byte_and_ages_the_rest():
    gds = GreedyDualSize()
    gds.touch("small-slow", 1, 1.0)
    gds.touch("big-fast", 1000, 0.001)
    assert gds.victim(["small-slow", "big-fast"]) == "big-fast"
    # a head used often enough keeps its room against one used once
    for _ in range(5):
        gds.touch("big-often", 1000, 0.1)
    gds.touch("big-once", 1000, 0.1)
    assert gds.victim(["big-often", "big-once"]) == "big-once"


def test_a_request_that_goes_away_leaves_the_load_it_waited_on_to_the_others():
    residency, loads, _ = table(None, workers=1)
    loads.gate["x"] = threading.Event()

    async def go() -> LoadedHead:
        blocker = asyncio.create_task(residency.acquire({"x": served("x")}))
        await asyncio.sleep(0.05)  # the one load thread is busy: a's load waits in the queue
        gone = asyncio.create_task(residency.acquire({"a": served("a")}))
        await asyncio.sleep(0.05)
        gone.cancel()
        loads.gate["x"].set()
        await blocker
        return (await residency.acquire({"a": served("a")}))["a"]

    assert asyncio.run(go()).version == 1
    assert loads.calls.count(("a", 1)) == 1


@pytest.mark.parametrize("mapped", [False, True])
def test_freed_heap_goes_back_after_heap_held_heads_are_evicted_not_mapped_ones(
    monkeypatch, mapped
):
    from multitask_serve.service import residency as module

    trims = []
    monkeypatch.setattr(module, "release_freed_memory", lambda: trims.append(1))
    size = module.TRIM_AFTER_EVICTED_BYTES // 4
    residency, loads, _ = table(2 * size, policy=LRU(), workers=1, heap_trim="evicted")
    loads.mapped = mapped
    for i in range(12):  # 10 evictions, 2.5x the trim threshold
        residency.acquire_now({f"h{i}": served(f"h{i}", size=size)})
    residency._executor.shutdown(wait=True)
    assert len(trims) == (0 if mapped else 2)


def test_freed_heap_goes_back_when_resident_memory_passes_what_the_loaded_heads_account_for(
    monkeypatch,
):
    """The resident rule: after evictions (at most every TRIM_CHECK_SECONDS), a trim when resident
    memory is over the baseline plus the loaded heads' bytes by more than the slack, and only
    then, whatever the heads are."""
    from multitask_serve.service import residency as module

    trims = []
    monkeypatch.setattr(module, "release_freed_memory", lambda: trims.append(1))
    monkeypatch.setattr(module, "TRIM_CHECK_SECONDS", 0.0)
    resident = [1000 << 20]
    monkeypatch.setattr(module, "resident_bytes", lambda: resident[0])
    size = 10 << 20
    residency, loads, sample = table(2 * size, policy=LRU(), workers=1)
    loads.mapped = True  # the rule looks at memory, not at how heads hold it
    residency.mark_baseline()  # 1000 MiB, nothing loaded

    def load(i: int, extra: int) -> None:
        # What the process holds once head i is in: the baseline, the two loaded heads, extra.
        resident[0] = (1000 << 20) + min(i + 1, 2) * size + extra
        residency.acquire_now({f"h{i}": served(f"h{i}", size=size)})

    for i in range(4):  # evictions from the third load on; memory as the heads account for it
        load(i, extra=0)
    residency._trims.submit(lambda: None).result()
    assert trims == []
    load(4, extra=module.TRIM_SLACK_BYTES + (1 << 20))  # freed heap left resident: over the slack
    residency._trims.submit(lambda: None).result()
    assert trims == [1] and sample("mts_heap_trims_total") == 1
    load(5, extra=module.TRIM_SLACK_BYTES - (1 << 20))  # under it
    residency._trims.submit(lambda: None).result()
    assert trims == [1]
