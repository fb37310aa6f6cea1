"""Micro-batching across requests and tasks: concurrent requests share one trunk run.

Requests enqueue typed entries. One worker takes the oldest, then keeps adding entries until the
batch holds ``max_texts`` texts or ``max_tokens`` estimated tokens, or ``max_wait`` has passed since
the oldest arrived; it then runs the whole batch through the engine in a single thread (one trunk
run on all cores, every head on the rows that asked for it) while the next batch gathers. A request
with more texts than a batch holds is split into several entries and reassembled in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.engine import Engine
from service.errors import Overloaded
from service.metrics import Metrics
from service.registry import LoadedHead
from service.types import Job, JobResult


@dataclass
class Entry:
    job: Job
    tokens: int  # estimated: characters / 4 + 2, capped at the trunk's max length
    enqueued: float
    future: asyncio.Future[JobResult] = field(repr=False)


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
    ) -> None:
        self._engine, self._metrics = engine, metrics
        self._max_queued = max_queued_texts
        self._max_queue_wait = max_queue_wait_s
        self._texts_per_s: float | None = None  # recent inference throughput, a moving average
        self._queued = 0  # texts waiting, touched only on the event loop
        self._max_texts, self._max_tokens, self._max_wait = max_texts, max_tokens, max_wait_s
        self._max_length = max_length
        self._queue: asyncio.Queue[Entry] | None = None
        self._worker: asyncio.Task[None] | None = None
        # One inference thread: a trunk run already uses every core (intra-op threads).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _estimate(self, texts: list[str]) -> int:
        return sum(min(len(t) // 4 + 2, self._max_length) for t in texts)

    async def submit(self, heads: Mapping[str, LoadedHead], texts: list[str]) -> JobResult:
        if self._queue is None:  # no running loop owns a worker (an app used without lifespan)
            loop = asyncio.get_running_loop()
            job = Job(heads, texts)
            return (await loop.run_in_executor(self._executor, self._engine.predict_many, [job]))[0]
        if self._queued + len(texts) > self._max_queued:
            # Beyond the bound a request would only wait longer than any client will: refuse it
            # now, cheaply, and let the client back off.
            raise Overloaded(
                f"{self._queued} texts are queued (limit {self._max_queued}); retry shortly"
            )
        if self._max_queue_wait > 0 and self._texts_per_s:
            # The count bound alone lets the wait grow with how slow each text is; this one
            # refuses a request that would wait longer than the deadline at the recent pace.
            wait = (self._queued + len(texts)) / self._texts_per_s
            if wait > self._max_queue_wait:
                raise Overloaded(
                    f"the queue would take {wait:.2f} s to reach this request (limit "
                    f"{self._max_queue_wait:g} s); retry shortly"
                )
        self._queued += len(texts)
        loop = asyncio.get_running_loop()
        chunks = [texts[i : i + self._max_texts] for i in range(0, len(texts), self._max_texts)]
        entries = [
            Entry(
                Job(heads, chunk), self._estimate(chunk), time.perf_counter(), loop.create_future()
            )
            for chunk in chunks
        ]
        for entry in entries:
            self._queue.put_nowait(entry)
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
        )

    async def _gather(self, first: Entry) -> tuple[list[Entry], Entry | None]:
        assert self._queue is not None
        batch, texts, tokens = [first], len(first.job.texts), first.tokens
        deadline = first.enqueued + self._max_wait
        while texts < self._max_texts:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                # Polling, not wait_for(queue.get()): a timed-out get can lose an item.
                await asyncio.sleep(min(remaining, 0.0005))
                continue
            entry = self._queue.get_nowait()
            if (
                texts + len(entry.job.texts) > self._max_texts
                or tokens + entry.tokens > self._max_tokens
            ):
                return batch, entry  # it starts the next batch
            batch.append(entry)
            texts += len(entry.job.texts)
            tokens += entry.tokens
        return batch, None

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: Entry | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            batch, carry = await self._gather(first)
            self._queued -= sum(len(e.job.texts) for e in batch)
            batch = [e for e in batch if not e.future.cancelled()]  # clients that went away
            if not batch:
                continue
            started = time.perf_counter()
            for entry in batch:
                self._metrics.queue_seconds.observe(started - entry.enqueued)
            await self._execute(loop, batch)
            texts = sum(len(e.job.texts) for e in batch)
            pace = texts / max(time.perf_counter() - started, 1e-6)
            previous = self._texts_per_s
            self._texts_per_s = pace if previous is None else 0.8 * previous + 0.2 * pace

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[Entry]) -> None:
        try:
            results = await loop.run_in_executor(
                self._executor, self._engine.predict_many, [e.job for e in batch]
            )
        except Exception as exc:
            if len(batch) > 1:
                # One request's input must not fail the others that shared its batch: run each
                # alone, so that only the culprit gets the error.
                for entry in batch:
                    await self._execute(loop, [entry])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
