"""A small closed-loop HTTP load generator for the benchmarks.

``closed_loop`` keeps ``in_flight`` requests outstanding with an asyncio httpx client: each worker
sends its next request as soon as the previous one returned, so the figure is the server's
throughput at that concurrency (the client shares the machine's cores with the server, which both
sides of a comparison pay alike); ``measure`` also keeps every request's latency. The servers
themselves start and stop in process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from support.stats import percentile

# A request: path and JSON body (None: a GET), how many texts it carries, and optionally
# headers of its own.
Request = (
    tuple[str, dict[str, Any] | None, int] | tuple[str, dict[str, Any] | None, int, dict[str, str]]
)


@dataclass
class Run:
    """What one closed-loop measurement saw: every answered request's latency, and the refusals."""

    seconds: float
    texts: int
    latencies: list[float] = field(default_factory=list)  # seconds, 2xx answers only
    paths: list[str] = field(default_factory=list)  # each latency's request path
    failures: Counter[int] = field(default_factory=Counter)  # non-2xx answers by status
    client_cpu_s: float = 0.0  # CPU time this (client) process used meanwhile, all threads

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


async def _closed_loop(
    url: str,
    requests: Callable[[int], Request],
    seconds: float,
    in_flight: int,
    strict: bool,
    shared_pool: bool,
) -> Run:
    counter = itertools.count()
    run = Run(seconds=0.0, texts=0)
    async with contextlib.AsyncExitStack() as stack:
        # One client (one keep-alive connection) per worker by default: httpx's shared pool
        # costs client CPU that grows with the connections it holds (measured at 64 in flight:
        # about 11 ms of client CPU per request against under 2 ms at 8; bench/latency.py).
        count = 1 if shared_pool else in_flight
        per_client = in_flight if shared_pool else 1
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, limits=limits, timeout=120)
            )
            for _ in range(count)
        ]
        deadline = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < deadline:
                path, body, texts, *headers = requests(next(counter))
                sent = time.perf_counter()
                extra = headers[0] if headers else None
                r = await (
                    client.get(path, headers=extra)
                    if body is None
                    else client.post(path, json=body, headers=extra)
                )
                if r.status_code // 100 != 2:
                    if strict:
                        raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
                    run.failures[r.status_code] += 1
                    continue
                run.latencies.append(time.perf_counter() - sent)
                run.paths.append(path)
                run.texts += texts

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(clients[i % count]) for i in range(in_flight)))
        # Requests still in flight at the deadline finish and count: divide by the real time.
        run.seconds = time.perf_counter() - started
        run.client_cpu_s = time.process_time() - cpu
        return run


def measure(
    url: str,
    requests: Callable[[int], Request],
    seconds: float,
    in_flight: int,
    strict: bool = True,
    shared_pool: bool = False,
) -> Run:
    """Latencies and throughput with ``in_flight`` requests outstanding; request i is
    ``requests(i)``. ``strict`` raises on the first non-2xx answer; otherwise they are counted.
    ``shared_pool`` sends every request through one httpx client (the older way)."""
    return asyncio.run(_closed_loop(url, requests, seconds, in_flight, strict, shared_pool))


def closed_loop(
    url: str, requests: Callable[[int], Request], seconds: float, in_flight: int
) -> float:
    """Texts per second with ``in_flight`` requests outstanding; request i is ``requests(i)``."""
    return measure(url, requests, seconds, in_flight).texts_per_s
