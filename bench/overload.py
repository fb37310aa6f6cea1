"""Overload: find the saturation rate, then drive twice that rate open-loop against ``mts serve``.

1. Saturation, closed loop: ``--concurrency`` clients each send one single-text request, wait for
   the answer and send the next, for ``--probe-seconds``. Accepted requests per second is the
   saturation rate.
2. Overload, open loop: requests leave on a fixed schedule at ``--factor`` x that rate for
   ``--seconds``, whatever the server answers, so a slow server faces a growing backlog (its
   bounds turn the excess into 429s) instead of a slower client.

The load is single-text requests to ``POST /predict/<task>`` (``--protocol predict``, the default)
or the same texts as Open Inference Protocol requests to ``POST /v2/models/<task>/infer``
(``--protocol v2``: one BYTES tensor ``text`` of shape [1], JSON tensor form).

Prints requests sent, accepted (2xx), 429s (and whether each carried Retry-After and the route's
own error body), other 4xx, 5xx, transport errors, accepted latency p50/p99/max, and the server's
resident memory (VmRSS) sampled every 0.5 s; ``--out`` also writes them to a JSON file, under
``--label``, beside the file's other runs. The load generator runs on the same machine as the
server and takes CPU from it. Exits 1 if any 5xx or transport error occurred, or a 429 lacked
Retry-After or the route's error form.

    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.overload --repo model-repo [--seconds 60]
    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.overload --repo model-repo --protocol v2 \
        --out bench/results/overload-v2.json --label v2-bound-128
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.results import read_results, write_results
from support.servers import rss_mib, start_server
from support.stats import percentile

KEEP_ALIVE_S = 3.0  # reuse idle connections younger than this (uvicorn's timeout is 5 s)
TEXTS = [
    "The central bank raised interest rates by half a point on Thursday.",
    "What a brilliant match, the striker scored twice in the final minutes!",
    "I am not sure this phone was worth the money, the battery dies by noon.",
    "Parliament votes on the new climate bill next week after a long debate.",
]


@dataclass(frozen=True)
class Protocol:
    """How one text becomes a request, and the error form the route's 429s must take."""

    path: Callable[[str], str]  # task -> path
    body: Callable[[str], Any]  # text -> JSON body
    error_form: Callable[[Any], bool]  # a 429's parsed body -> whether it is the route's form


PROTOCOLS = {
    "predict": Protocol(
        path=lambda task: f"/predict/{task}",
        body=lambda text: {"inputs": text},
        error_form=lambda b: (
            isinstance(b.get("error"), dict) and b["error"].get("code") == "overloaded"
        ),
    ),
    "v2": Protocol(
        path=lambda task: f"/v2/models/{task}/infer",
        body=lambda text: {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]
        },
        error_form=lambda b: isinstance(b.get("error"), str),
    ),
}


class Connections:
    """A minimal HTTP/1.1 client on asyncio streams with a pool of keep-alive connections.

    With httpx at these rates, on a machine whose cores the server shares, the client and not
    the server became the place where requests waited (docs/reliability.md); this one does
    little more per request than write it and read the answer.
    """

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await self._take()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        if not status_line.startswith("HTTP/1.1 "):
            raise ValueError(f"unexpected response {status_line!r}")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
        if "content-length" not in headers:
            raise ValueError(f"response without content-length: {status_line!r}")
        content = await reader.readexactly(int(headers["content-length"]))
        if headers.get("connection") == "close":
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return int(status_line.split()[1]), headers, content

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            # uvicorn closes connections idle for 5 s; one it closed may not show EOF yet.
            if not reader.at_eof() and time.monotonic() - since < KEEP_ALIVE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


@dataclass
class Outcomes:
    protocol: Protocol
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    accepted_s: list[float] = field(default_factory=list)
    refused_s: list[float] = field(default_factory=list)
    missing_retry_after: int = 0
    wrong_error_form: int = 0  # 429s whose body is not the route's own error form
    transport_errors: list[str] = field(default_factory=list)

    async def send(self, client: Connections, path: str, i: int) -> None:
        body = json.dumps(self.protocol.body(TEXTS[i % len(TEXTS)])).encode()
        started = time.perf_counter()
        try:
            status, headers, content = await client.post(path, body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.transport_errors.append(repr(exc))
            return
        elapsed = time.perf_counter() - started
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.accepted_s.append(elapsed)
        elif status in (429, 503):
            self.refused_s.append(elapsed)
            self.missing_retry_after += "retry-after" not in headers
            if status == 429:
                try:
                    form = self.protocol.error_form(json.loads(content))
                except (ValueError, AttributeError):
                    form = False
                self.wrong_error_form += not form


async def closed_loop(
    url: str, protocol: Protocol, path: str, seconds: float, concurrency: int
) -> float:
    out, http = Outcomes(protocol), Connections(url)
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            await out.send(http, path, i)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    http.close()
    return len(out.accepted_s) / elapsed


async def open_loop(
    url: str, protocol: Protocol, path: str, rate: float, seconds: float
) -> tuple[Outcomes, float]:
    out, http = Outcomes(protocol), Connections(url)
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(out.send(http, path, i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    lag = time.perf_counter() - (started + (total - 1) / rate)
    await asyncio.gather(*tasks)
    http.close()
    return out, lag


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--task", default="sentiment")
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="predict",
        help="predict: POST /predict/<task>; v2: POST /v2/models/<task>/infer (JSON tensors)",
    )
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--probe-seconds", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument(
        "--set", action="append", default=[], metavar="MTS_X=V", help="server setting, repeatable"
    )
    p.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--label", help="the run's key in --out (default: protocol and settings)")
    args = p.parse_args()
    protocol = PROTOCOLS[args.protocol]
    env = {"MTS_LOG_LEVEL": "warning", **dict(kv.split("=", 1) for kv in args.set)}
    path = protocol.path(args.task)
    log = Path(tempfile.mkdtemp(prefix="overload-")) / "server.log"
    proc, url = start_server(args.repo, log, env)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mib(proc.pid))
            stop.wait(0.5)

    try:
        print(f"server pid {proc.pid}, settings {env}, POST {path}, log {log}")
        asyncio.run(closed_loop(url, protocol, path, 3.0, args.concurrency))  # warm-up
        rate = asyncio.run(closed_loop(url, protocol, path, args.probe_seconds, args.concurrency))
        print(
            f"saturation (closed loop, {args.concurrency} clients, {args.probe_seconds:.0f} s): "
            f"{rate:.1f} requests/s"
        )
        rss_before = rss_mib(proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        target = args.factor * rate
        out, lag = asyncio.run(open_loop(url, protocol, path, target, args.seconds))
        stop.set()
        sampler.join()
        rss_end = rss_mib(proc.pid)
        alive = proc.poll() is None
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=60)
    sent = sum(out.statuses.values()) + len(out.transport_errors)
    ok = sum(n for s, n in out.statuses.items() if 200 <= s < 300)
    refused = out.statuses[429] + out.statuses[503]
    other_4xx = sum(n for s, n in out.statuses.items() if 400 <= s < 500 and s != 429)
    other_5xx = sum(n for s, n in out.statuses.items() if s >= 500 and s != 503)
    print(
        f"overload (open loop, {args.factor:g} x = {target:.1f} requests/s for "
        f"{args.seconds:.0f} s; schedule lag at the end {lag * 1000:.0f} ms)"
    )
    print(f"  sent {sent}, accepted (2xx) {ok} = {ok / args.seconds:.1f}/s")
    print(
        f"  429/503 {refused} (429: {out.statuses[429]}, 503: {out.statuses[503]}); "
        f"without Retry-After: {out.missing_retry_after}; not in the route's error form: "
        f"{out.wrong_error_form}; refusal latency p50 "
        f"{percentile(out.refused_s, 50) * 1000:.1f} ms"
    )
    print(
        f"  other 4xx {other_4xx}, other 5xx {other_5xx}, transport errors "
        f"{len(out.transport_errors)} {out.transport_errors[:3]}"
    )
    print(
        f"  accepted latency p50 {percentile(out.accepted_s, 50) * 1000:.0f} ms, p99 "
        f"{percentile(out.accepted_s, 99) * 1000:.0f} ms, max {max(out.accepted_s) * 1000:.0f} ms"
    )
    print(
        f"  server RSS before {rss_before:.0f} MiB, peak {max(samples):.0f} MiB, end "
        f"{rss_end:.0f} MiB ({len(samples)} samples); server alive after the run: {alive}"
    )
    if args.out is not None:
        figures = {
            "protocol": args.protocol,
            "path": path,
            "settings": env,
            "concurrency": args.concurrency,
            "probe_seconds": args.probe_seconds,
            "seconds": args.seconds,
            "factor": args.factor,
            "saturation_rps": rate,
            "offered_rps": target,
            "schedule_lag_s": lag,
            "sent": sent,
            "accepted": ok,
            "accepted_rps": ok / args.seconds,
            "statuses": {str(s): n for s, n in sorted(out.statuses.items())},
            "refused_429": out.statuses[429],
            "refused_503": out.statuses[503],
            "missing_retry_after": out.missing_retry_after,
            "wrong_error_form": out.wrong_error_form,
            "refusal_p50_ms": percentile(out.refused_s, 50) * 1000,
            "other_4xx": other_4xx,
            "other_5xx": other_5xx,
            "transport_errors": len(out.transport_errors),
            "accepted_ms": {
                "p50": percentile(out.accepted_s, 50) * 1000,
                "p99": percentile(out.accepted_s, 99) * 1000,
                "max": max(out.accepted_s) * 1000,
            },
            "rss_mib": {"before": rss_before, "peak": max(samples), "end": rss_end},
            "server_alive": alive,
        }
        label = args.label or f"{args.protocol} {' '.join(args.set) or 'defaults'}"
        runs = read_results(args.out, {})
        runs[label] = figures
        write_results(args.out, runs, indent=2)
        print(f"  written to {args.out} as {label!r}")
    failed = (
        other_5xx
        or out.transport_errors
        or out.missing_retry_after
        or out.wrong_error_form
        or not alive
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
