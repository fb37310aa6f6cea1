"""Shadows: a task's candidate head reads live traffic and answers nobody, until it is promoted
(served atomically, as a replace is) or discarded. The whole feature is here:

- ``Shadows``, the lifecycle: per task at most one candidate version, validated like any upload
  (``HeadRegistry.load``) and stored as a version that is not served; its report; promote; discard;
  each replica's sync of the repository's shadow pointer. It sits beside the registry
  (service/registry.py), which keeps the served set, changes under the registry's lock and hears
  from it when a served head changes (a task removed, or its candidate served by a rollback or
  another replica's promote, ends the shadow here).
- ``ShadowRunner``, the runs: the trunk run that serves a batch also yields the candidate's tap
  (``Engine.predict_shadowed``); once the batch's answers are handed back, the runner runs the
  candidate on those taps on a thread of its own, at a lower CPU priority than serving, and
  compares its outputs with the served head's (service/outputs.py, per form of output). The served
  path never waits on it: it holds one batch at a time, and a batch that finishes while it is still
  busy (serving keeps the cores, or the candidate is slow or hangs) is skipped and counted. A
  candidate that fails is counted too; nothing of it reaches a client.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from multitask_serve.modelrepo.repository import RepositoryError
from multitask_serve.modelrepo.types import HeadSpec
from multitask_serve.service.convergence import converge, pointed
from multitask_serve.service.errors import Conflict, NotFound, UnknownTask
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.outputs import Comparison, form_of
from multitask_serve.service.registry import HeadRegistry
from multitask_serve.service.residency import LoadedHead, ServedHead
from multitask_serve.service.sessions import Tap
from multitask_serve.service.types import Output, TokenizedBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowWork:
    """One served head's rows of one trunk run, kept for its task's candidate."""

    served: LoadedHead
    candidate: LoadedHead
    hidden: Tap  # the candidate's tap, for the rows of the length group the trunk held there
    local: list[int] | None  # which of those rows the served head read; None: all of them
    batch: TokenizedBatch  # those rows
    texts: list[str]
    served_outputs: list[Output]
    served_seconds: float  # the served head's time on these rows, decoding included

    @property
    def task(self) -> str:
        return self.served.spec.task


@dataclass
class ShadowStats:
    """One candidate's running totals on this replica, since it was loaded here."""

    candidate: LoadedHead
    seen: Comparison = field(default_factory=Comparison)  # texts compared with the served head
    skipped: int = 0  # never run: the shadow was busy with an earlier batch
    failed: int = 0  # the candidate raised on them
    batches: int = 0
    served_seconds: float = 0.0
    candidate_seconds: float = 0.0
    last_error: str | None = None

    def add(self, found: Comparison, served_s: float, candidate_s: float) -> None:
        self.seen.add(found)
        self.batches += 1
        self.served_seconds += served_s
        self.candidate_seconds += candidate_s

    def report(self) -> dict[str, Any]:
        seen, batches = self.seen.texts, self.batches
        return {
            "since": datetime.fromtimestamp(self.candidate.loaded_at, UTC).isoformat(),
            "texts_seen": seen,
            "texts_skipped": self.skipped,
            "texts_failed": self.failed,
            "batches": batches,
            "agreement": self.seen.agreed / seen if seen else None,
            "mean_abs_score_diff": self.seen.mean_abs_score_diff,
            **form_of(self.candidate.spec).report(self.seen),
            "latency_ms_per_batch": {
                "served": 1000 * self.served_seconds / batches if batches else None,
                "candidate": 1000 * self.candidate_seconds / batches if batches else None,
            },
            "last_error": self.last_error,
        }


class ShadowRunner:
    """Runs candidates after their batches are answered, one batch at a time, off the serving
    thread; busy means skip."""

    def __init__(
        self,
        candidates: Callable[[], Mapping[str, LoadedHead]],
        run: Callable[[ShadowWork], list[Output]],
        metrics: Metrics,
        executor: Executor,
    ) -> None:
        """``candidates``: the shadow snapshot (``Shadows.snapshot``); ``run``: the candidate
        head on a work's rows (``Engine.run_shadow``); ``executor``: one low-priority thread."""
        self.candidates = candidates
        self._run = run
        self._metrics = metrics
        self._executor = executor
        self._lock = threading.Lock()
        self._busy = False
        self._stats: dict[str, ShadowStats] = {}
        self._seen: Mapping[str, LoadedHead] | None = None

    def current(self) -> Mapping[str, LoadedHead]:
        """The shadows a batch runs with; totals of candidates that ended are dropped (with them
        the last reference to their sessions) when the registry's snapshot changes."""
        shadows = self.candidates()
        if shadows is not self._seen:
            self._seen = shadows
            with self._lock:
                for task, stats in list(self._stats.items()):
                    if shadows.get(task) is not stats.candidate:
                        del self._stats[task]
        return shadows

    def submit(self, works: list[ShadowWork]) -> None:
        """Hand a batch's shadow work over, after its answers were given; never blocks."""
        if not works:
            return
        with self._lock:
            busy, self._busy = self._busy, True
        if not busy:
            try:
                self._executor.submit(self._run_all, works)
                return
            except RuntimeError:  # shutting down: the executor takes no more work
                with self._lock:
                    self._busy = False
        for work in works:
            with self._lock:
                self._stats_for(work.candidate).skipped += len(work.texts)
            self._metrics.shadow_texts.labels(work.task, "skipped").inc(len(work.texts))

    def idle(self) -> bool:
        with self._lock:
            return not self._busy

    def _run_all(self, works: list[ShadowWork]) -> None:
        try:
            for work in works:
                self._run_one(work)
        finally:
            with self._lock:
                self._busy = False

    def _run_one(self, work: ShadowWork) -> None:
        task, n = work.task, len(work.texts)
        started = time.perf_counter()
        try:
            outputs = self._run(work)
            found = form_of(work.candidate.spec).compare(work.served_outputs, outputs)
        except Exception as exc:  # a candidate's failure is its report's business, no one else's
            with self._lock:
                stats = self._stats_for(work.candidate)
                first = stats.last_error is None
                stats.failed += n
                stats.last_error = f"{type(exc).__name__}: {exc}"
            self._metrics.shadow_texts.labels(task, "failed").inc(n)
            if first:
                log.warning("shadow of %s version %d failed: %s", task, work.candidate.version, exc)
            return
        elapsed = time.perf_counter() - started
        with self._lock:
            self._stats_for(work.candidate).add(found, work.served_seconds, elapsed)
        self._metrics.shadow_texts.labels(task, "compared").inc(n)
        self._metrics.shadow_agreements.labels(task).inc(found.agreed)
        self._metrics.shadow_head_seconds.labels(task).observe(elapsed)

    def _stats_for(self, candidate: LoadedHead) -> ShadowStats:
        """The candidate's totals; a new candidate for the task starts from zero. Lock held."""
        stats = self._stats.get(candidate.spec.task)
        if stats is None or stats.candidate is not candidate:
            stats = self._stats[candidate.spec.task] = ShadowStats(candidate)
        return stats

    def report(self, served: ServedHead | None, candidate: LoadedHead) -> dict[str, Any]:
        """The candidate's report against the served head, as GET .../shadow answers it."""
        with self._lock:
            body = self._stats_for(candidate).report()
        return {
            "task": candidate.spec.task,
            "kind": str(candidate.spec.kind),
            "served_version": served.version if served is not None else None,
            "candidate_version": candidate.version,
            "candidate_branch_layer": candidate.spec.branch_layer,
            "candidate_strategy": candidate.spec.training.get("strategy"),
            **body,
        }


class Shadows:
    """Per task at most one candidate version, beside the served heads of ``registry``.

    Every change happens under the registry's lock, so that a candidate and the head it shadows
    change together: a task removed, or its candidate's version served (a rollback to it, or
    another replica's promote seen by ``HeadRegistry.sync``), ends its shadow here.
    """

    def __init__(
        self,
        registry: HeadRegistry,
        run: Callable[[ShadowWork], list[Output]],
        metrics: Metrics,
        executor: Executor,
    ) -> None:
        """``run``: a candidate head on a work's rows (``Engine.run_shadow``); ``executor``: the
        one low-priority thread candidates run on."""
        self._registry = registry
        self._repo = registry.repo
        self._shadows: Mapping[str, LoadedHead] = MappingProxyType({})
        self.runner = ShadowRunner(self.snapshot, run, metrics, executor)
        registry.on_change(self._served_changed)

    def snapshot(self) -> Mapping[str, LoadedHead]:
        """Task -> its candidate head, one read-only snapshot (a batch takes one)."""
        return self._shadows

    def get(self, task: str) -> LoadedHead:
        shadow = self._shadows.get(task)
        if shadow is None:
            raise NotFound(f"task {task!r} has no shadow")
        return shadow

    def add(self, spec: HeadSpec, model: bytes, replace: bool = False) -> LoadedHead:
        """Validate a candidate like any upload and store it as a version that is not served.

        The task must be served, by a head that answers in the same form (labels, spans or
        vectors: the comparison reads both outputs alike). One shadow per task: a second is a
        conflict unless ``replace``.
        """
        task = spec.task
        self._check(spec, replace)
        head = self._registry.load(spec, model)
        with self._registry.lock:
            self._check(spec, replace)
            version = self._repo.add_head(spec, model, make_current=False)
            self._repo.set_shadow(task, version)
            head = dataclasses.replace(head, version=version)
            self._set({task: head})
        log.info("shadowing %s with version %d (tap %d)", task, version, spec.branch_layer)
        return head

    def _check(self, spec: HeadSpec, replace: bool) -> None:
        served = self._registry.snapshot().get(spec.task)
        if served is None:
            raise UnknownTask(spec.task)
        if served.spec.traits.decode != spec.traits.decode:
            raise Conflict(
                f"task {spec.task!r} serves a {served.spec.kind} head; a {spec.kind} candidate "
                "answers in another form and cannot be compared with it"
            )
        if not replace and spec.task in self._shadows:
            version = self._shadows[spec.task].version
            raise Conflict(
                f"task {spec.task!r} already shadows version {version}; discard it first or "
                "pass replace=true"
            )

    def report(self, task: str) -> dict[str, Any]:
        """The candidate's report against the served head, as GET .../shadow answers it."""
        return self.runner.report(self._registry.snapshot().get(task), self.get(task))

    def promote(self, task: str) -> LoadedHead:
        """Serve the candidate: atomically, as a replace does; the shadow ends."""
        with self._registry.lock:
            head = self.get(task)
            try:
                self._repo.promote_shadow(task)
            except RepositoryError as exc:  # another replica promoted or discarded it
                raise NotFound(f"task {task!r} has no shadow: {exc}") from exc
            self._registry.serve({task: head})  # which ends the shadow (_served_changed)
        log.info("promoted %s version %d from shadow to served", task, head.version)
        return head

    def discard(self, task: str) -> LoadedHead:
        """End the shadow; its version stays stored and is never served."""
        with self._registry.lock:
            head = self.get(task)
            self._repo.clear_shadow(task)
            self._set({task: None})
        log.info("discarded shadow version %d of %s", head.version, task)
        return head

    def sync(self, tasks: Iterable[str] | None = None) -> None:
        """Converge on the repository's shadow pointers, which other replicas may have changed:
        load each served task's candidate not held here (a broken one is logged and left as it
        was), drop the candidates whose pointer is gone. ``tasks``: only these may have changed
        (None: read every served task's). Runs after ``HeadRegistry.sync``."""
        served = self._registry.snapshot()
        if tasks is None:
            wanted = pointed(served, self._repo.shadow_version)
        else:  # the tasks not named keep their candidates
            named = set(tasks)
            wanted = {t: h.version for t, h in self._shadows.items() if t not in named}
            wanted |= pointed([t for t in sorted(named) if t in served], self._repo.shadow_version)
        held = self._shadows
        loaded = self._registry.load_versions(wanted, held, "shadow")
        with self._registry.lock:
            self._set(converge(self._shadows, held, wanted, loaded))

    def _served_changed(self, task: str, head: ServedHead | None) -> None:
        """The registry's news (its lock held): a task no longer served, or one whose candidate
        is served now, has no shadow."""
        shadow = self._shadows.get(task)
        if shadow is not None and (head is None or head.version == shadow.version):
            self._set({task: None})

    def _set(self, changes: Mapping[str, LoadedHead | None]) -> None:
        """A new snapshot with each task's candidate (None: none). The registry's lock is held."""
        shadows = {**self._shadows, **changes}
        self._shadows = MappingProxyType({t: h for t, h in shadows.items() if h is not None})
