"""Which served heads are loaded: every stored head is served, at most ``MTS_HEAD_MEMORY_MB`` of
them are loaded, and a request for one that is not loads it first.

A load runs in the loads executor, never on the batch thread or the event loop (checked against
the trunk and its graph's signature; stored versions passed a probe inference before they were
stored); each (task, version) loads once however many requests want it (they all wait on the
same future), and a request whose heads are all loaded takes no lock a load holds. After a head
is loaded, heads are evicted until the loaded ones fit the budget again: the policy picks which
(``GreedyDualSize`` by default, chosen over plain LRU on a skewed trace by bench/eviction.py);
pinned heads are never evicted. A head is evicted only from this table: a batch that holds it
still runs it, and its memory goes back when the last such batch ends.

What a head counts against the budget is what its session was measured to hold resident: its
graph's bytes x ``GRAPH_FACTOR`` plus ``SESSION_BYTES`` (bench/head_costs.py,
bench/results/head-costs.json: 0.16-0.30 MiB for a classifier-only head of a few KB, 21.2 MiB for
a head with three copied layers whose graph is 20.3 MiB).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from multitask_serve.modelrepo.types import HeadSpec
from multitask_serve.service.memory import resident_bytes
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.sessions import HeadSession, release_freed_memory

log = logging.getLogger(__name__)

# A session's resident cost beyond its graph's bytes (ONNX Runtime's session state and thread
# pool, the Python wrapper), and the share its weights take over their bytes in the graph (the
# optimised graph's copies): the measured envelope of every kind and depth.
SESSION_BYTES = 256 * 1024
GRAPH_FACTOR = 1.04
# The resident rule: after evictions, at most this often, resident memory is compared with the
# baseline plus the loaded heads; over it by the slack (the larger of the bytes and the share of
# the budget), freed heap goes back to the OS.
TRIM_CHECK_SECONDS = 1.0
TRIM_SLACK_BYTES = 32 << 20
TRIM_SLACK_SHARE = 20  # 5%
# The evicted rule: freed heap goes back to the OS once this much has been evicted since the last
# time (heads mapped from compiled files aside).
TRIM_AFTER_EVICTED_BYTES = 64 << 20


@dataclass(frozen=True)
class ServedHead:
    """A task's served head, loaded or not: what answers it, and what loading it costs."""

    spec: HeadSpec
    version: int
    size: int  # bytes it counts against MTS_HEAD_MEMORY_MB once loaded

    @property
    def task(self) -> str:
        return self.spec.task


@dataclass(frozen=True)
class LoadedHead(ServedHead):
    session: HeadSession
    # When this process loaded it (epoch seconds): where a shadow's report starts.
    loaded_at: float = field(default_factory=time.time, compare=False)
    # What loading it took (validation, session, probe): what loading it again would cost.
    load_seconds: float = field(default=0.0, compare=False)
    # Its weights are mapped from a compiled head's file (service/compiled.py), not held in the
    # heap: unloading it gives its pages back at once, with nothing for malloc_trim to do.
    mapped: bool = field(default=False, compare=False)

    def served(self) -> ServedHead:
        """The same head without its session (what the served set keeps)."""
        return ServedHead(self.spec, self.version, self.size)


def head_bytes(graph_bytes: int) -> int:
    """What a head whose graph is ``graph_bytes`` long counts against the budget."""
    return int(graph_bytes * GRAPH_FACTOR) + SESSION_BYTES


class Policy(Protocol):
    """Which loaded head to evict. ``touch`` on every use and load (``cost``: seconds its last
    load took), ``forget`` when it leaves; ``victim`` picks among ``candidates`` (never empty)."""

    def touch(self, task: str, size: int, cost: float) -> None: ...

    def forget(self, task: str) -> None: ...

    def victim(self, candidates: Iterable[str]) -> str: ...


class LRU:
    """The least recently used head, whatever its size or the cost of loading it again."""

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()

    def touch(self, task: str, size: int, cost: float) -> None:
        self._order[task] = None
        self._order.move_to_end(task)

    def forget(self, task: str) -> None:
        self._order.pop(task, None)

    def victim(self, candidates: Iterable[str]) -> str:
        allowed = set(candidates)
        return next(t for t in self._order if t in allowed)


class GreedyDualSize:
    """GreedyDual-Size with frequency (Cao and Irani; Cherkasova): a head's priority is the
    clock when it was last used plus (uses x load seconds / bytes), and the lowest goes first;
    the clock rises to each victim's priority, so heads not used for long age out. A small head
    that is slow to load again stays; a large one must be used often to keep its room."""

    def __init__(self) -> None:
        self._clock = 0.0
        self._priority: dict[str, float] = {}
        self._uses: dict[str, int] = {}

    def touch(self, task: str, size: int, cost: float) -> None:
        uses = self._uses.get(task, 0) + 1
        self._uses[task] = uses
        self._priority[task] = self._clock + uses * max(cost, 1e-6) / max(size, 1)

    def forget(self, task: str) -> None:
        self._priority.pop(task, None)
        self._uses.pop(task, None)

    def victim(self, candidates: Iterable[str]) -> str:
        task = min(candidates, key=lambda t: self._priority.get(t, 0.0))
        self._clock = max(self._clock, self._priority.get(task, 0.0))
        return task


POLICIES: dict[str, Callable[[], Policy]] = {"gds": GreedyDualSize, "lru": LRU}


@dataclass
class _Entry:
    head: LoadedHead
    cost: float  # seconds its load took


class Residency:
    """The loaded heads of one replica, keyed by task: at most one version per task (the served
    one), within ``budget`` bytes (None: no bound)."""

    def __init__(
        self,
        load: Callable[[ServedHead], LoadedHead],
        executor: Executor,
        metrics: Metrics,
        budget: int | None = None,
        pinned: Iterable[str] = (),
        policy: Policy | None = None,
        current: Callable[[str], int | None] = lambda task: None,
        heap_trim: str = "resident",
    ) -> None:
        """``current`` names the version served for a task now: a load that finishes after its
        task changed is answered to its requests but not held. ``heap_trim``: when freed heap
        goes back to the OS (``_evict``)."""
        self._heap_trim = heap_trim
        self._baseline: int | None = None  # resident bytes with no head loaded on demand
        self._trim_checked = 0.0  # when resident memory was last compared (``resident`` rule)
        self._trims = ThreadPoolExecutor(1, thread_name_prefix="heap-trim")
        self._load, self._executor, self._metrics = load, executor, metrics
        self._current = current
        self.budget = budget
        self._pinned = set(pinned)
        self._policy = policy or GreedyDualSize()
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._bytes = 0
        self._evicted_bytes = 0  # heap-held heads' bytes evicted since the last trim
        self._reserved = 0  # bytes of on-demand loads under way, made room for before they start
        self._loading: dict[tuple[str, int], Future[LoadedHead]] = {}
        metrics.head_memory_budget_bytes.set(float("inf") if budget is None else budget)
        metrics.heads_loaded.set_function(lambda: len(self._entries))
        metrics.head_loaded_bytes.set_function(lambda: self._bytes)

    # -- reading -------------------------------------------------------------------------------

    def loaded(self, task: str, version: int | None = None) -> LoadedHead | None:
        """The head loaded for ``task`` (of ``version``, if given), or None."""
        entry = self._entries.get(task)
        if entry is None or (version is not None and entry.head.version != version):
            return None
        return entry.head

    def tasks(self) -> list[str]:
        return list(self._entries)

    def any_loaded(self) -> LoadedHead | None:
        """A loaded head, the same one while it stays (the first by name): readiness' probe."""
        with self._lock:
            return self._entries[min(self._entries)].head if self._entries else None

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(self._pinned)

    @property
    def loaded_bytes(self) -> int:
        return self._bytes

    # -- the request path ----------------------------------------------------------------------

    async def acquire(self, served: Mapping[str, ServedHead]) -> dict[str, LoadedHead]:
        """The loaded heads of ``served``, loading those that are not (awaited off the loop)."""
        found, waiting = self._lookup(served)
        for task, future in waiting.items():
            # Shielded: a request that goes away must not cancel a load others wait on.
            found[task] = await asyncio.shield(asyncio.wrap_future(future))
        return found

    def acquire_now(self, served: Mapping[str, ServedHead]) -> dict[str, LoadedHead]:
        """``acquire`` for a thread that may block (never the batch thread)."""
        found, waiting = self._lookup(served)
        found.update({task: future.result() for task, future in waiting.items()})
        return found

    def _lookup(
        self, served: Mapping[str, ServedHead]
    ) -> tuple[dict[str, LoadedHead], dict[str, Future[LoadedHead]]]:
        found: dict[str, LoadedHead] = {}
        waiting: dict[str, Future[LoadedHead]] = {}
        misses = 0
        with self._lock:
            for task, head in served.items():
                entry = self._entries.get(task)
                if entry is not None and entry.head.version == head.version:
                    self._policy.touch(task, entry.head.size, entry.cost)
                    found[task] = entry.head
                    continue
                misses += 1
                key = (task, head.version)
                future = self._loading.get(key)
                if future is None or future.done():  # none, or one whose result went nowhere
                    future = self._executor.submit(self._load_on_demand, head)
                    self._loading[key] = future
                waiting[task] = future
        if served:
            self._metrics.head_lookups.labels("hit").inc(len(served) - misses)
        if misses:
            self._metrics.head_lookups.labels("miss").inc(misses)
        return found, waiting

    def _load_on_demand(self, served: ServedHead) -> LoadedHead:
        started = time.perf_counter()
        # Room first, then the load: a replica's memory stays within the budget while heads
        # load, not only once they are in.
        with self._lock:
            self._reserved += served.size
            evicted, trim = self._evict(keep=None)
        self._after_eviction(evicted, trim, served.task)
        try:
            try:
                head = self._load(served)
            except BaseException:
                with self._lock:
                    self._reserved -= served.size
                raise
            cost = time.perf_counter() - started
            self.put(head, cost, only_if_current=True, reserved=served.size)
            # what its requests waited: the load, the evictions it made and the memory given back
            self._metrics.head_cold_load_seconds.observe(time.perf_counter() - started)
        finally:  # held (a hit from now on) or failed (the next request tries again)
            with self._lock:
                self._loading.pop((served.task, served.version), None)
        return head

    # -- changes -------------------------------------------------------------------------------

    def put(
        self,
        head: LoadedHead,
        cost: float | None = None,
        only_if_current: bool = False,
        reserved: int = 0,
    ) -> None:
        """Hold ``head`` as its task's loaded head (in place of any other version), then evict
        other heads until the loaded ones fit the budget. ``cost``: seconds to load it again
        (default: what its load took); ``reserved``: the room its load had made, now its own."""
        task = head.task
        cost = head.load_seconds if cost is None else cost
        with self._lock:
            self._reserved -= reserved
            if only_if_current and self._current(task) != head.version:
                return
            self._drop(task)
            self._entries[task] = _Entry(head, cost)
            self._bytes += head.size
            self._policy.touch(task, head.size, cost)
            evicted, trim = self._evict(keep=task)
        self._after_eviction(evicted, trim, task)

    def _after_eviction(self, evicted: list[str], trim: bool, task: str) -> None:
        for name in evicted:
            self._metrics.head_evictions.inc()
            log.debug("evicted %s to load %s", name, task)
        if not trim:
            return
        if self._heap_trim == "evicted":
            self._executor.submit(release_freed_memory)
            return
        now = time.monotonic()
        if now - self._trim_checked >= TRIM_CHECK_SECONDS:
            self._trim_checked = now
            # Its own thread: a trim must not hold up the loads that requests wait on.
            self._trims.submit(self._trim_if_over)

    def mark_baseline(self) -> None:
        """Take the resident memory now, before any head is loaded on demand, as what the
        ``resident`` rule adds the loaded heads' bytes to."""
        self._baseline = resident_bytes() - self._bytes

    def _trim_if_over(self) -> None:
        """Give freed heap back to the OS when resident memory passes what the loaded heads and
        the loads under way account for, over the baseline, by more than the slack."""
        if self._baseline is None or self.budget is None:
            return
        with self._lock:
            expected = self._baseline + self._bytes + self._reserved
        if resident_bytes() > expected + max(TRIM_SLACK_BYTES, self.budget // TRIM_SLACK_SHARE):
            release_freed_memory()
            self._metrics.heap_trims.inc()

    def drop(self, task: str) -> None:
        """Unload ``task``'s head (it is no longer served, or another version is)."""
        with self._lock:
            self._drop(task)

    def pin(self, task: str, pinned: bool = True) -> None:
        """Pinned heads are never evicted (unpinning evicts nothing by itself)."""
        with self._lock:
            if pinned:
                self._pinned.add(task)
            else:
                self._pinned.discard(task)

    def _drop(self, task: str) -> None:
        entry = self._entries.pop(task, None)
        if entry is not None:
            self._bytes -= entry.head.size
            self._policy.forget(task)

    def _evict(self, keep: str | None) -> tuple[list[str], bool]:
        """Evict heads other than ``keep`` until the loaded ones and the loads under way fit the
        budget; returns them, and whether freed heap should now go back to the OS, not stay in
        glibc's free lists, where RSS would creep past the budget load after load. Off the
        request's path. The ``resident`` rule (the default) compares resident memory with what
        the loaded heads account for after evictions, at most every TRIM_CHECK_SECONDS, and
        trims when it is over by the slack, whatever freed the heap (evicted sessions, graphs
        that loads and compilations parsed); ``evicted`` trims once per
        TRIM_AFTER_EVICTED_BYTES of heap-held heads evicted (a trim of a large heap takes a
        while)."""
        if self.budget is None:
            return [], False
        evicted = []
        while self._bytes + self._reserved > self.budget:
            candidates = [t for t in self._entries if t != keep and t not in self._pinned]
            if not candidates:
                break  # pinned heads and the one just loaded: over budget until they change
            victim = self._policy.victim(candidates)
            head = self._entries[victim].head
            if not head.mapped:
                self._evicted_bytes += head.size
            self._drop(victim)
            evicted.append(victim)
        if self._heap_trim != "evicted":
            return evicted, bool(evicted)
        trim = self._evicted_bytes >= TRIM_AFTER_EVICTED_BYTES
        if trim:
            self._evicted_bytes = 0
        return evicted, trim
