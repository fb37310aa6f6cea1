"""Micro-batching across requests and tasks: concurrent requests share one trunk run.

Requests enqueue typed entries. One worker takes the oldest, then keeps adding entries until the
batch holds ``max_texts`` rows or ``max_tokens`` estimated tokens, or ``max_wait`` has passed since
the oldest arrived (a text longer than the served length, read whole, is a row per window, and
the queue's bounds count rows too: long texts claim no more work than as many short ones); it
then runs the whole batch through the engine in a single thread (one trunk run on all cores,
every head on the rows that asked for it) while the next batch gathers. A request with more
texts than a batch holds is split into several entries and reassembled in order.

A task with a shadow candidate (service/shadow.py) gets the candidate's tap from the same trunk
run; the candidate runs only after the batch's answers are handed back, on the shadow's own thread.

Readiness goes through the same worker (``check``): a probe queues behind real work and runs on the
inference thread as a batch of its own. The worker's progress is tracked, so that a worker that
stopped (its task ended) or hangs (work waiting, no batch finishing) is told apart from one that is
merely busy; once the worker has stopped, every waiting and new request fails at once (Unavailable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from multitask_serve.service.engine import Engine
from multitask_serve.service.errors import Overloaded, TooLarge, Unavailable
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.residency import LoadedHead
from multitask_serve.service.shadow import ShadowRunner, ShadowWork
from multitask_serve.service.tracing import BatchTrace, RequestTrace, Tracing, current
from multitask_serve.service.types import Job, JobResult

log = logging.getLogger(__name__)


class WorkerStopped(Unavailable):
    """The batch worker's task has ended: nothing will run queued work again."""


class WorkerStuck(Unavailable):
    """The batch worker holds work and has finished no batch for longer than the bound."""


@dataclass
class Entry:
    job: Job
    tokens: int  # estimated (``Batcher._weigh``)
    enqueued: float
    future: asyncio.Future[JobResult] = field(repr=False)
    # A readiness probe (no job texts): run on the inference thread as a batch of its own.
    probe: Callable[[], object] | None = field(default=None, repr=False)
    rows: int = 0  # estimated: a row per text, or per window of a text read whole
    trace: RequestTrace | None = field(default=None, repr=False)  # None: not traced


class Batcher:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        max_texts: int,
        max_tokens: int,
        max_wait_s: float,
        max_length: int,
        max_queued_texts: int = 1024,
        max_queue_wait_s: float = 0.0,
        shadow: ShadowRunner | None = None,
        inline_max_tokens: int = 0,
        windows: Callable[[int], int] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``windows``: how many windows a text of so many tokens takes when read whole (None:
        one, every text cut at ``max_length``). ``tracing``: spans of each traced request's
        queue wait and of the batches that serve them (None: off)."""
        self._engine, self._metrics = engine, metrics
        self._tracing = tracing
        self._windows = windows or (lambda tokens: 1)
        self._shadow = shadow  # None: no task is ever shadowed
        self._max_queued = max_queued_texts
        self._max_queue_wait = max_queue_wait_s
        self._rows_per_s: float | None = None  # recent inference throughput, a moving average
        self._queued = 0  # rows waiting, touched only on the event loop
        self._max_texts, self._max_tokens, self._max_wait = max_texts, max_tokens, max_wait_s
        self._max_length = max_length
        # With no wait to build batches, a small request that finds the worker idle is the next
        # batch on its own: it runs on the event loop, without two thread hand-offs (0: never).
        self._inline_max_tokens = inline_max_tokens if max_wait_s == 0 else 0
        self._inline_candidates = 0  # requests deciding whether they are alone (see _alone)
        self._queue: asyncio.Queue[Entry] | None = None
        self._worker: asyncio.Task[None] | None = None
        # One inference thread: a trunk run already uses every core (intra-op threads).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        # Progress, touched only on the event loop. Entries submitted and not yet taken out by the
        # worker (run or dropped), and when the worker last made progress: a batch finished, or
        # work arrived while it had none. Work waiting and no progress for long is a hung worker.
        self._outstanding = 0
        self._progress = time.perf_counter()
        self._progressed: asyncio.Event | None = None  # set, and replaced, as each batch finishes
        self._waiting: set[asyncio.Future[JobResult]] = set()  # answers not given yet
        self._failure: str | None = None  # why the worker stopped; every submit fails with it
        self._stopping = False

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._progressed = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="batcher")
        self._worker.add_done_callback(self._ended)

    async def stop(self) -> None:
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _ended(self, worker: asyncio.Task[None]) -> None:
        """The worker task ended: at shutdown, or by a crash that nothing else would notice."""
        error = None if worker.cancelled() else worker.exception()
        if self._stopping:
            reason = "shutting down"
        elif error is None:
            reason = "cancelled"
            log.error("batch worker stopped (cancelled); every prediction fails from now on")
        else:
            reason = f"{type(error).__name__}: {error}"
            log.error("batch worker crashed; every prediction fails from now on", exc_info=error)
        self._failure = f"batch worker stopped: {reason}"
        # Requests already queued or in the lost batch would otherwise wait forever.
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(WorkerStopped(self._failure))

    @property
    def failure(self) -> str | None:
        """Why the worker stopped (it never restarts), or None while it runs."""
        return self._failure

    def stalled_for(self) -> float:
        """Seconds the worker has held work without finishing a batch; 0 when it holds none."""
        return time.perf_counter() - self._progress if self._outstanding else 0.0

    def _enqueue(self, entries: list[Entry]) -> None:
        assert self._queue is not None
        if self._outstanding == 0:  # an idle worker's stall clock starts with its new work
            self._progress = time.perf_counter()
        self._outstanding += len(entries)
        for entry in entries:
            self._waiting.add(entry.future)
            entry.future.add_done_callback(self._waiting.discard)
            self._queue.put_nowait(entry)

    def _weigh(self, texts: list[str], whole: bool) -> tuple[int, int]:
        """Estimated rows and tokens: a text's tokens as characters / 4 + 2; one longer than the
        served length is a full row per window when read whole, one full row when cut."""
        rows = tokens = 0
        for text in texts:
            estimate = len(text) // 4 + 2
            windows = self._windows(estimate) if whole and estimate > self._max_length else 1
            rows += windows
            tokens += windows * self._max_length if windows > 1 else min(estimate, self._max_length)
        return rows, tokens

    async def submit(
        self, heads: Mapping[str, LoadedHead], texts: list[str], whole: bool = True
    ) -> JobResult:
        """A request's answers: refused now if the queue is past its bounds (``_admit``), run at
        once if it is all the work there is (``_run_inline``), else queued in entries of at most
        ``max_texts`` texts that batches take (``_queue_and_join``). ``whole``: read texts
        longer than the served length in windows (else cut them)."""
        if self._failure is not None:
            raise WorkerStopped(self._failure)
        if self._queue is None:  # no running loop owns a worker (an app used without lifespan)
            loop = asyncio.get_running_loop()
            entry = Entry(Job(heads, texts, whole), 0, time.perf_counter(), loop.create_future())
            await self._execute(loop, [entry])
            return await entry.future
        rows, tokens = self._weigh(texts, whole)
        self._admit(rows, len(texts))
        trace = current.get()
        if trace is not None:
            trace.submitted(heads, len(texts))
        if (
            self._outstanding == 0
            and rows <= self._max_texts
            and tokens <= self._inline_max_tokens
            and await self._alone()
        ):
            return self._run_inline(Job(heads, texts, whole), rows, trace)
        return await self._queue_and_join(heads, texts, whole, trace)

    def _admit(self, rows: int, texts: int) -> None:
        """Raises Overloaded when ``rows`` more would pass the queue's bounds; TooLarge when its
        long texts' windows would pass them even with nothing queued (retrying cannot help)."""
        if rows > max(self._max_queued, texts):
            raise TooLarge(
                f"the texts are estimated at {rows} rows, a long text once per window; the "
                f"queue holds {self._max_queued} (MTS_MAX_QUEUED_TEXTS): send fewer or shorter "
                "texts, or truncate"
            )
        if self._queued + rows > self._max_queued:
            # Beyond the bound a request would only wait longer than any client will: refuse it
            # now, cheaply, and let the client back off.
            raise Overloaded(
                f"{self._queued} texts are queued (limit {self._max_queued}, a long text counts "
                "once per window); retry shortly"
            )
        if self._max_queue_wait > 0 and self._rows_per_s:
            # The count bound alone lets the wait grow with how slow each text is; this one
            # refuses a request that would wait longer than the deadline at the recent pace.
            wait = (self._queued + rows) / self._rows_per_s
            if wait > self._max_queue_wait:
                raise Overloaded(
                    f"the queue would take {wait:.2f} s to reach this request (limit "
                    f"{self._max_queue_wait:g} s); retry shortly"
                )

    async def _queue_and_join(
        self,
        heads: Mapping[str, LoadedHead],
        texts: list[str],
        whole: bool,
        trace: RequestTrace | None = None,
    ) -> JobResult:
        """Queue the texts in entries of at most ``max_texts``; their answers, in order."""
        loop = asyncio.get_running_loop()
        step = self._max_texts
        entries = []
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            rows, tokens = self._weigh(chunk, whole)
            job = Job(heads, chunk, whole, start)
            entries.append(
                Entry(
                    job, tokens, time.perf_counter(), loop.create_future(), rows=rows, trace=trace
                )
            )
        self._queued += sum(e.rows for e in entries)
        self._enqueue(entries)
        parts = await asyncio.gather(*(e.future for e in entries))
        if len(parts) == 1:
            return parts[0]
        # Every chunk carried the same head snapshot, so version and kind agree across parts.
        first = parts[0].results
        return JobResult(
            results={
                task: dataclasses.replace(
                    result, outputs=[o for p in parts for o in p.results[task].outputs]
                )
                for task, result in first.items()
            },
            truncated=[t for p in parts for t in p.truncated],
            tokens=[n for p in parts for n in p.tokens],
            windows=[n for p in parts for n in p.windows],
        )

    async def _alone(self) -> bool:
        """Whether this request is the only work there is, once every request that arrived with
        it has reached the batcher: requests read together (say, while the loop was busy) must
        still share a batch, through the worker, instead of running inline one by one."""
        self._inline_candidates += 1
        try:
            await asyncio.sleep(0)  # one loop turn: requests ready now get this far too
        finally:
            self._inline_candidates -= 1
        return self._inline_candidates == 0 and self._outstanding == 0

    def _run_inline(self, job: Job, rows: int, trace: RequestTrace | None) -> JobResult:
        """The batch an idle worker would run next, this request alone, run here on the loop.

        Nothing is queued and no batch is running (``_outstanding`` is 0), so this is the only
        inference under way, as on the inference thread; requests that arrive meanwhile wait in
        their sockets, as they would wait in the queue, and the worker takes them afterwards.
        The event loop answers nothing else meanwhile, which ``inline_max_tokens`` bounds to a
        few milliseconds of work. Measured at concurrency 1 (BENCHMARKS.md): 0.3-0.7 ms less per
        single-text request than the hand-off to the inference thread and back.
        """
        started = time.perf_counter()
        self._metrics.queue_seconds.observe(0.0)
        shadows = self._shadow.current() if self._shadow is not None else {}
        traced = (
            None if trace is None else trace.tracing.batch([(trace, started, rows)], started, True)
        )
        if traced is None:
            results, works = self._infer([job], shadows)
        else:
            results, works = traced.once(self._infer, [job], shadows)
        self._paced(sum(results[0].windows), started)
        if works and self._shadow is not None:
            self._shadow.submit(works)
        return results[0]

    def _infer(
        self, jobs: list[Job], shadows: Mapping[str, LoadedHead]
    ) -> tuple[list[JobResult], list[ShadowWork]]:
        if shadows:
            return self._engine.predict_shadowed(jobs, shadows)
        return self._engine.predict_many(jobs), []  # the plain path, as if shadows did not exist

    def _paced(self, rows: int, started: float) -> None:
        """Fold a finished batch into the recent throughput (``max_queue_wait_s`` reads it)."""
        pace = rows / max(time.perf_counter() - started, 1e-6)
        previous = self._rows_per_s
        self._rows_per_s = pace if previous is None else 0.8 * previous + 0.2 * pace

    async def check(self, probe: Callable[[], object], timeout: float) -> bool:
        """Readiness through the worker: ``probe`` queues like a request and runs in its turn.

        Answers within ``timeout``: True once the probe ran; False when it is still queued at the
        deadline but batches finished meanwhile (busy, not stuck; the probe is then dropped).
        Raises WorkerStopped when the worker has stopped, WorkerStuck when it has held work for
        ``timeout`` seconds without finishing a batch, and the probe's own exception when the
        probe fails. Each outcome is counted in its own series, outside the serving metrics.
        """
        try:
            ran = await self._check(probe, timeout)
        except WorkerStopped:
            self._metrics.readiness_probes.labels("stopped").inc()
            raise
        except WorkerStuck:
            self._metrics.readiness_probes.labels("stuck").inc()
            raise
        except Exception:
            self._metrics.readiness_probes.labels("failed").inc()
            raise
        self._metrics.readiness_probes.labels("ok" if ran else "busy").inc()
        return ran

    async def _check(self, probe: Callable[[], object], timeout: float) -> bool:
        if self._failure is not None:
            raise WorkerStopped(self._failure)
        loop = asyncio.get_running_loop()
        if self._queue is None:  # no worker (an app used without lifespan): the probe alone
            try:
                await asyncio.wait_for(loop.run_in_executor(self._executor, probe), timeout)
            except TimeoutError:
                raise WorkerStuck(f"probe timed out after {timeout:g} s") from None
            return True
        assert self._progressed is not None
        if self.stalled_for() >= timeout:
            raise WorkerStuck(self._stuck(timeout))
        entry = Entry(Job({}, []), 0, time.perf_counter(), loop.create_future(), probe)
        self._enqueue([entry])  # starts the stall clock if the worker was idle
        deadline, progressed = time.perf_counter() + timeout, False
        try:
            # Wait for the probe's turn, up to the deadline or until the worker has gone
            # ``timeout`` without finishing a batch, whichever comes first.
            while True:
                remaining = min(deadline - time.perf_counter(), timeout - self.stalled_for())
                if remaining <= 0:
                    break
                finished = asyncio.ensure_future(self._progressed.wait())  # the next batch
                waiters: set[asyncio.Future[Any]] = {entry.future, finished}
                try:
                    done, _ = await asyncio.wait(waiters, timeout=remaining)
                finally:
                    finished.cancel()
                if entry.future in done:
                    entry.future.result()  # the probe's exception, or WorkerStopped
                    return True
                if finished not in done:
                    break
                progressed = True
        finally:
            entry.future.cancel()  # if still queued, the worker drops it
        if not progressed or self.stalled_for() >= timeout:
            raise WorkerStuck(self._stuck(timeout))
        return False  # still queued behind batches that finish: busy, not stuck

    def _stuck(self, timeout: float) -> str:
        return (
            f"batch worker stuck: no batch finished for {self.stalled_for():.1f} s with work "
            f"waiting (limit {timeout:g} s)"
        )

    async def _gather(self, first: Entry) -> tuple[list[Entry], Entry | None]:
        assert self._queue is not None
        if first.probe is not None:
            return [first], None
        batch, rows, tokens = [first], first.rows, first.tokens
        deadline = first.enqueued + self._max_wait
        while rows < self._max_texts:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                # Polling, not wait_for(queue.get()): a timed-out get can lose an item.
                await asyncio.sleep(min(remaining, 0.0005))
                continue
            entry = self._queue.get_nowait()
            if (
                entry.probe is not None  # a probe runs alone (and closes this batch early)
                or rows + entry.rows > self._max_texts
                or tokens + entry.tokens > self._max_tokens
            ):
                return batch, entry  # it starts the next batch
            batch.append(entry)
            rows += entry.rows
            tokens += entry.tokens
        return batch, None

    async def _run(self) -> None:
        assert self._queue is not None and self._progressed is not None
        loop = asyncio.get_running_loop()
        carry: Entry | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            gathered, carry = await self._gather(first)
            self._queued -= sum(e.rows for e in gathered)
            batch = [e for e in gathered if not e.future.cancelled()]  # clients that went away
            if batch and batch[0].probe is not None:
                await self._execute_probe(loop, batch[0])  # out of the serving metrics and pace
            elif batch:
                started = time.perf_counter()
                for entry in batch:
                    self._metrics.queue_seconds.observe(started - entry.enqueued)
                traced = None
                if self._tracing is not None:  # the batch's span, and each request's queue wait
                    taken = [(e.trace, e.enqueued, e.rows) for e in batch]
                    traced = self._tracing.batch(taken, started)
                try:
                    await self._execute(loop, batch, traced)
                finally:  # a cancelled batch (shutdown) still ends its span
                    if traced is not None:
                        traced.end()
                self._paced(sum(e.rows for e in batch), started)
            self._outstanding -= len(gathered)
            self._progress = time.perf_counter()
            self._progressed.set()
            self._progressed = asyncio.Event()

    async def _execute_probe(self, loop: asyncio.AbstractEventLoop, entry: Entry) -> None:
        assert entry.probe is not None
        try:
            await loop.run_in_executor(self._executor, entry.probe)
        except Exception as exc:
            if not entry.future.done():
                entry.future.set_exception(exc)
            return
        if not entry.future.done():
            entry.future.set_result(JobResult(results={}, truncated=[]))

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, batch: list[Entry], traced: BatchTrace | None = None
    ) -> None:
        shadows = self._shadow.current() if self._shadow is not None else {}
        jobs = [e.job for e in batch]
        infer = self._infer if traced is None else traced.wrap(self._infer)
        try:
            results, works = await loop.run_in_executor(self._executor, infer, jobs, shadows)
        except Exception as exc:
            if len(batch) > 1:
                # One request's input must not fail the others that shared its batch: run each
                # alone, so that only the culprit gets the error.
                for entry in batch:
                    await self._execute(loop, [entry], traced)
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        if works and self._shadow is not None:  # only now: the answers are handed back
            self._shadow.submit(works)
