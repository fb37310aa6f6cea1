"""Shadow runs: a task's candidate head reads live traffic and answers nobody.

The trunk run that serves a batch also yields the candidate's tap (``Engine.predict_shadowed``);
once the batch's answers are handed back, ``ShadowRunner`` runs the candidate on those taps on a
thread of its own, at a lower CPU priority than serving, and compares its outputs with the served
head's. The served path never waits on it: it holds one batch at a time, and a batch that finishes
while it is still busy (serving keeps the cores, or the candidate is slow or hangs) is skipped and
counted. A candidate that fails is counted too; nothing of it reaches a client.

Agreement per text: the same label (classification), the same set of entity spans (token
classification), cosine >= ``COSINE_AGREES`` (embeddings).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from multitask_serve.service.metrics import Metrics
from multitask_serve.service.registry import LoadedHead
from multitask_serve.service.sessions import Tap
from multitask_serve.service.types import Output, TokenizedBatch

log = logging.getLogger(__name__)

# Two embeddings of one text "agree" at this cosine or above.
COSINE_AGREES = 0.99


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
class Comparison:
    """What one batch's candidate outputs showed against the served ones."""

    agreed: int = 0
    score_diffs: list[float] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)
    spans_matched: int = 0
    spans_served: int = 0
    spans_candidate: int = 0


def compare(decode: str, served: list[Output], candidate: list[Output]) -> Comparison:
    out = Comparison()
    for s, c in zip(served, candidate, strict=True):
        if decode == "classes":
            _classes(s, c, out)  # type: ignore[arg-type]
        elif decode == "spans":
            _spans(s, c, out)  # type: ignore[arg-type]
        else:
            _vectors(s, c, out)  # type: ignore[arg-type]
    return out


def _classes(served: dict[str, Any], candidate: dict[str, Any], out: Comparison) -> None:
    out.agreed += served["label"] == candidate["label"]
    common = served["scores"].keys() & candidate["scores"].keys()
    if common:
        diffs = [abs(served["scores"][k] - candidate["scores"][k]) for k in common]
        out.score_diffs.append(sum(diffs) / len(diffs))


def _spans(served: list[dict[str, Any]], candidate: list[dict[str, Any]], out: Comparison) -> None:
    def key(span: dict[str, Any]) -> tuple[str, int, int]:
        return span["entity"], span["start"], span["end"]

    s = {key(span): span["score"] for span in served}
    c = {key(span): span["score"] for span in candidate}
    matched = s.keys() & c.keys()
    out.agreed += s.keys() == c.keys()
    out.spans_matched += len(matched)
    out.spans_served += len(s)
    out.spans_candidate += len(c)
    out.score_diffs.extend(abs(s[k] - c[k]) for k in matched)


def _vectors(served: list[float], candidate: list[float], out: Comparison) -> None:
    dot = sum(a * b for a, b in zip(served, candidate, strict=True))
    norms = math.sqrt(sum(a * a for a in served)) * math.sqrt(sum(b * b for b in candidate))
    cosine = dot / norms if norms > 0 else 0.0
    out.cosines.append(cosine)
    out.agreed += cosine >= COSINE_AGREES
    diffs = [abs(a - b) for a, b in zip(served, candidate, strict=True)]
    out.score_diffs.append(sum(diffs) / len(diffs))


@dataclass
class ShadowStats:
    """One candidate's running totals on this replica, since it was loaded here."""

    candidate: LoadedHead
    texts: int = 0  # compared with the served head
    agreed: int = 0
    skipped: int = 0  # never run: the shadow was busy with an earlier batch
    failed: int = 0  # the candidate raised on them
    batches: int = 0
    score_diff_sum: float = 0.0
    score_diff_count: int = 0
    cosine_sum: float = 0.0
    cosine_min: float | None = None
    spans_matched: int = 0
    spans_served: int = 0
    spans_candidate: int = 0
    served_seconds: float = 0.0
    candidate_seconds: float = 0.0
    last_error: str | None = None

    def add(self, texts: int, c: Comparison, served_s: float, candidate_s: float) -> None:
        self.texts += texts
        self.batches += 1
        self.agreed += c.agreed
        self.score_diff_sum += sum(c.score_diffs)
        self.score_diff_count += len(c.score_diffs)
        self.cosine_sum += sum(c.cosines)
        if c.cosines:
            low = min(c.cosines)
            self.cosine_min = low if self.cosine_min is None else min(self.cosine_min, low)
        self.spans_matched += c.spans_matched
        self.spans_served += c.spans_served
        self.spans_candidate += c.spans_candidate
        self.served_seconds += served_s
        self.candidate_seconds += candidate_s

    def report(self) -> dict[str, Any]:
        decode = self.candidate.spec.traits.decode
        seen = self.texts
        body: dict[str, Any] = {
            "since": datetime.fromtimestamp(self.candidate.loaded_at, UTC).isoformat(),
            "texts_seen": seen,
            "texts_skipped": self.skipped,
            "texts_failed": self.failed,
            "batches": self.batches,
            "agreement": self.agreed / seen if seen else None,
            "mean_abs_score_diff": (
                self.score_diff_sum / self.score_diff_count if self.score_diff_count else None
            ),
        }
        if decode == "classes":
            body["label_agreement"] = body["agreement"]
        elif decode == "spans":
            predicted = self.spans_served + self.spans_candidate
            body["entity_span_f1"] = 2 * self.spans_matched / predicted if predicted else None
            body["entity_spans"] = {
                "served": self.spans_served,
                "candidate": self.spans_candidate,
                "matched": self.spans_matched,
            }
        else:
            body["cosine_mean"] = self.cosine_sum / seen if seen else None
            body["cosine_min"] = self.cosine_min
        batches = self.batches
        body["latency_ms_per_batch"] = {
            "served": 1000 * self.served_seconds / batches if batches else None,
            "candidate": 1000 * self.candidate_seconds / batches if batches else None,
        }
        body["last_error"] = self.last_error
        return body


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
        """``candidates``: the registry's shadow snapshot; ``run``: the candidate head on a
        work's rows (``Engine.run_shadow``); ``executor``: one low-priority thread."""
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
            found = compare(work.candidate.spec.traits.decode, work.served_outputs, outputs)
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
            self._stats_for(work.candidate).add(n, found, work.served_seconds, elapsed)
        self._metrics.shadow_texts.labels(task, "compared").inc(n)
        self._metrics.shadow_agreements.labels(task).inc(found.agreed)
        self._metrics.shadow_head_seconds.labels(task).observe(elapsed)

    def _stats_for(self, candidate: LoadedHead) -> ShadowStats:
        """The candidate's totals; a new candidate for the task starts from zero. Lock held."""
        stats = self._stats.get(candidate.spec.task)
        if stats is None or stats.candidate is not candidate:
            stats = self._stats[candidate.spec.task] = ShadowStats(candidate)
        return stats

    def report(self, served: LoadedHead | None, candidate: LoadedHead) -> dict[str, Any]:
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
