"""What tracing costs a served request: ``mts serve`` with tracing off and on, side by side, and
what the hooks cost with tracing off.

Two servers of ``--repo`` run at once, one without an OTLP endpoint (off) and one exporting every
span to a sink on loopback (on: ``OTEL_EXPORTER_OTLP_ENDPOINT``; the sink, a process of its own,
answers 200 to each export and drops it). Per round each server in turn gets the same closed-loop
loads, order alternating by round so that drift hits both alike: one text to one task at
concurrency 1 (latency; a request's fixed costs show most there) and one text to ``--tasks`` at
``--in-flight`` (throughput, with more spans per request: a head span per task). Per load and
round: requests/s, p50 and p99 latency, and the server's CPU ms per request (from /proc); per
round the on/off ratios; medians over rounds with their spread. Every caller samples (a
``traceparent`` with flags 01 on every request), so every request is traced: the most it costs.

The hooks with tracing off cannot be compared with the code before them side by side in one
server, so their own cost is measured apart: the checks a request meets on the way (each a
context variable or an attribute compared with None), timed in a loop against an empty one; and
FastAPI's per-request telemetry check with its telemetry switched off (as the app now does) and
as it was (its default, which looks for a global OpenTelemetry provider on every request).

    .venv/bin/python -m bench.tracing_overhead [--repo model-repo] [--rounds 5] [--seconds 8]
        [--out bench/results/tracing-overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

import httpx

from bench.http_vs_ort import TEXTS
from bench.loadgen import measure
from support.machine import machine
from support.results import write_results
from support.servers import cpu_seconds, free_port, start_server, stop, wait_idle
from support.stats import summary

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# The sink: OTLP/HTTP's traces endpoint that accepts every export and keeps only a count.
SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    exports = 0
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        Sink.exports += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        body = str(Sink.exports).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def hooks_off(iterations: int) -> dict[str, Any]:
    """ns per request of the checks a one-task request, queued, meets with tracing off (each as
    the code writes it: ``current`` in the batcher's submit and the answer's render, the batch's
    variable in the engine's tokenize, trunk and head hooks, the batcher's tracing attribute, and
    the locals compared with None on the way), timed against an empty function; and FastAPI's
    per-request telemetry check as the app now sets it (off) and at FastAPI's default (before:
    it looks for a global provider on every request)."""
    from fastapi.telemetry._asgi import NativeTelemetry

    from multitask_serve.service.tracing import FASTAPI_OFF, batch, current

    class Batcher:
        _tracing = None

    batcher = Batcher()

    def checks() -> None:
        trace = current.get()  # Batcher.submit
        if trace is not None:
            raise AssertionError
        if batcher._tracing is not None:  # Batcher._run
            raise AssertionError
        traced = None
        if traced is not None:  # Batcher._execute, then _run after it
            raise AssertionError
        if traced is not None:
            raise AssertionError
        for _stage in ("tokenize", "trunk", "head"):  # Engine: one batch, one trunk run, one head
            if batch.get() is not None:
                raise AssertionError
        if current.get() is not None:  # JSON.render
            raise AssertionError

    def stages() -> None:  # the loop of ``checks`` alone, which the engine does not have
        for _stage in ("tokenize", "trunk", "head"):
            pass

    def best(fn: Any) -> float:
        return min(timeit.repeat(fn, number=iterations, repeat=7)) / iterations * 1e9

    off = NativeTelemetry({**FASTAPI_OFF, "tracer_provider": None})
    default = NativeTelemetry(
        {
            "tracer_provider": None,
            "meter_provider": None,
            "logger_provider": None,
            "tracing": True,
            "metrics": True,
            "logs": True,
        }
    )
    assert not off.enabled() and not default.enabled()
    empty = best(lambda: None)
    return {
        "hooks_ns_per_request": round(best(checks) - best(stages), 1),
        "fastapi_check_ns_off_now": round(best(off.enabled) - empty, 1),
        "fastapi_check_ns_default_before": round(best(default.enabled) - empty, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--tasks", default="sentiment,topic,ner")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--threads", default="0", help="MTS_INTRA_OP_THREADS (0: every core)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tracing-overhead.json"))
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    headers = {"traceparent": TRACEPARENT}
    loads = {
        "c1-one-task": (f"/predict/{args.task}", [args.task], 1),
        f"c{args.in_flight}-{len(tasks)}-tasks": ("/predict", tasks, args.in_flight),
    }

    def traffic(path: str, names: list[str]) -> Any:
        def request(i: int) -> tuple[str, dict[str, Any], int, dict[str, str]]:
            body: dict[str, Any] = {"inputs": TEXTS[i % len(TEXTS)]}
            if path == "/predict":
                body["tasks"] = names
            return path, body, 1, headers

        return request

    rounds: dict[str, list[dict[str, float]]] = {
        f"{side} {load}": [] for load in loads for side in ("off", "on")
    }
    hooks = hooks_off(200_000)
    print(json.dumps(hooks), flush=True)
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    sink_url = f"http://127.0.0.1:{sink_port}"
    env = {"MTS_INTRA_OP_THREADS": args.threads}
    with tempfile.TemporaryDirectory(prefix="mts-tracing-overhead-") as tmp:
        servers = {}
        try:
            for side, extra in (("off", {}), ("on", {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url})):
                log = Path(tmp) / f"{side}.log"
                servers[side] = start_server(args.repo.resolve(), log, {**env, **extra})
            for r in range(args.rounds + 1):  # round 0 warms both up and is not kept
                order = ("off", "on") if r % 2 else ("on", "off")
                for side in order:
                    proc, url = servers[side]
                    for load, (path, names, in_flight) in loads.items():
                        request = traffic(path, names)
                        measure(url, request, args.warmup if r == 0 else 0.5, in_flight)
                        wait_idle(proc.pid)
                        cpu = cpu_seconds(proc.pid)
                        run = measure(url, request, args.seconds, in_flight)
                        wait_idle(proc.pid)
                        served = len(run.latencies)
                        figures = {
                            "requests_per_s": run.requests_per_s,
                            "p50_ms": run.percentile_ms(50),
                            "p99_ms": run.percentile_ms(99),
                            "server_cpu_ms_per_request": (cpu_seconds(proc.pid) - cpu)
                            * 1000
                            / served,
                        }
                        if r:
                            rounds[f"{side} {load}"].append(figures)
                        print(f"round {r} {side} {load}: {json.dumps(figures)}", flush=True)
        finally:
            for proc, _ in servers.values():
                stop(proc)
            exports = int(httpx.get(sink_url, timeout=10).text)
            sink.terminate()
            sink.wait()
    ratios = {}
    for load in loads:
        on, off = rounds[f"on {load}"], rounds[f"off {load}"]
        for key in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request"):
            ratios[f"{load} {key} on/off"] = summary(
                [a[key] / b[key] for a, b in zip(on, off, strict=True)]
            )
    results: dict[str, Any] = {
        "what": __doc__.splitlines()[0],
        "command": "python -m bench.tracing_overhead "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "loads": {k: {"path": p, "tasks": n, "in_flight": c} for k, (p, n, c) in loads.items()},
        "interleaved": True,
        "sampled": "every request (traceparent flags 01)",
        "exports_received_by_the_sink": exports,
        "hooks_off": hooks,
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "rounds": rounds,
        "phases": {p: {k: summary([f[k] for f in fs]) for k in fs[0]} for p, fs in rounds.items()},
        "on_over_off": ratios,
    }
    write_results(args.out, results)
    print(json.dumps({"hooks_off": hooks, "on_over_off": ratios}, indent=1))


if __name__ == "__main__":
    main()
