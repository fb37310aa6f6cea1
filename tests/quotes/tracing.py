"""Passages quoting what tracing costs (bench/results/tracing-overhead.json)."""

from __future__ import annotations

from collections.abc import Iterator

from tests.quotes import Quote

DEPLOY = "docs/deploy.md"


def tracing_quotes() -> Iterator[Quote]:
    def ratio(d: dict, key: str) -> float:
        return d["on_over_off"][key]["median"]

    def cpu(d: dict, side: str) -> float:
        return d["phases"][f"{side} c1-one-task"]["server_cpu_ms_per_request"]["median"]

    yield Quote(
        DEPLOY,
        "one text to one task at concurrency 1, throughput {:.2f}x, p50 latency {:.2f}x, p99 "
        "{:.2f}x and the server's CPU per request {:.2f}x of tracing off ({:.2f} ms against "
        "{:.2f} ms); one text to three tasks at 8 in flight, throughput {:.2f}x, p50 {:.2f}x, p99 "
        "{:.2f}x and CPU per request {:.2f}x. Off, the hooks cost {:.0f} ns per request, and "
        "FastAPI's own per-request telemetry check, now switched off, {:.0f} ns against {:.0f} ns "
        "at its default before.",
        "bench/results/tracing-overhead.json",
        lambda d: (
            ratio(d, "c1-one-task requests_per_s on/off"),
            ratio(d, "c1-one-task p50_ms on/off"),
            ratio(d, "c1-one-task p99_ms on/off"),
            ratio(d, "c1-one-task server_cpu_ms_per_request on/off"),
            cpu(d, "on"),
            cpu(d, "off"),
            ratio(d, "c8-3-tasks requests_per_s on/off"),
            ratio(d, "c8-3-tasks p50_ms on/off"),
            ratio(d, "c8-3-tasks p99_ms on/off"),
            ratio(d, "c8-3-tasks server_cpu_ms_per_request on/off"),
            d["hooks_off"]["hooks_ns_per_request"],
            d["hooks_off"]["fastapi_check_ns_off_now"],
            d["hooks_off"]["fastapi_check_ns_default_before"],
        ),
    )
