"""Latency of the compatible routes against the native route, same load, interleaved rounds.

One ``mts serve``; per round, the same closed-loop load (``--in-flight`` requests outstanding,
``--texts`` texts each, the same texts) is sent for ``--seconds`` to each route in turn: the
native ``/predict/<task>``, TEI's ``/tei/<task>`` (root) and, for the embedding task, OpenAI's
``/v1/embeddings``. Rounds interleave the routes so drift (thermal, other load) hits each alike,
and each round starts the cycle one route later, so no route always runs first. Writes per route
and task the median over rounds of p50/p99 latency, throughput and the server's CPU time per
request (from /proc: what the route costs, whatever else shares the cores), and each compatible
route's ratio to the native one: the median of the per-round ratios with their range::

    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.tei_vs_native [--repo model-repo] \
        [--profile DIR]

``--profile DIR`` then runs one more pass under py-spy (not in the figures) and prints, per task
and compatible route, the functions whose time per request differs most from the native route's
(milliseconds of samples per request, inclusive): where a route's overhead goes.

Without ``--repo`` it builds a repository from the tests' tiny random encoder (torch needed):
then the figures weigh the routes' own cost (parsing, shaping, JSON) against a very cheap
inference, the case where a route's overhead shows most.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import timeit
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import spy
from bench.loadgen import Request, measure
from support.results import write_results
from support.servers import cpu_seconds, start_server, stop
from support.tiny import tiny_repository

RATE = 200  # py-spy samples per second with --profile

TEXTS = [
    "john scored a great goal in the final",
    "the bank rates fell and the market was bad",
    "i love this phone",
    "shares fell after the results.",
]


def routes(task: str, kind: str, texts: list[str]) -> dict[str, Request]:
    n = len(texts)
    out: dict[str, Request] = {
        "native": (f"/predict/{task}", {"inputs": texts}, n),
        "tei": (f"/tei/{task}", {"inputs": texts, "normalize": False}, n),
    }
    if kind == "embedding":
        out["openai"] = ("/v1/embeddings", {"model": task, "input": texts}, n)
    return out


def constant(request: Request) -> Callable[[int], Request]:
    return lambda _: request


def rotated(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


def ms_per_request(raw: Path, requests: int) -> Counter[str]:
    """Per function, milliseconds of py-spy samples (inclusive) per request served."""
    samples: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            for function in {spy._function(f) for f in stack.split(";")}:
                samples[function] += int(count)
    return Counter({f: n * 1000 / RATE / requests for f, n in samples.items()})


def overhead(profiles: dict[str, tuple[Path, int]], top: int = 8) -> dict[str, list[Any]]:
    """Per compatible route, the functions whose ms per request differ most from native's."""
    native = ms_per_request(*profiles["native"])
    out = {}
    for name, (raw, served) in profiles.items():
        if name != "native":
            route = ms_per_request(raw, served)
            diff = {f: route[f] - native[f] for f in set(route) | set(native)}
            ranked = sorted(diff.items(), key=lambda item: -abs(item[1]))[:top]
            out[name] = [
                [f, round(d, 4), round(route[f], 4), round(native[f], 4)] for f, d in ranked
            ]
    return out


LOOKUP_PATHS = ("/predict/topic-zs", "/tei/topic-zs", "/v1/embeddings", "/v2/models/embed/infer")


def lookup_us(repo: Path, number: int = 20000) -> dict[str, dict[str, float]]:
    """Microseconds the app spends finding each route of ``LOOKUP_PATHS`` (POST), in-process: the
    router's search over its routes, and the request counter's route template."""
    from fastapi.routing import iter_route_contexts
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as Metric
    from starlette.routing import Match

    from multitask_serve.service.app import create_app
    from multitask_serve.service.observability import RequestCounter
    from multitask_serve.service.settings import Settings

    app = create_app(Settings(repository=repo, intra_op_threads=1), CollectorRegistry())
    routes = app.router.routes
    counter = RequestCounter(app, Metric("x", "x", registry=CollectorRegistry()), routes)
    out = {}
    for path in LOOKUP_PATHS:
        scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}

        def search(scope: dict[str, Any] = scope) -> None:
            for route in routes:
                if route.matches(scope)[0] is Match.FULL:
                    return

        chosen = next(r for r in iter_route_contexts(routes) if r.matches(scope)[0] is Match.FULL)
        routed = {**scope, "route": chosen}  # what the router leaves in the scope
        template = getattr(counter, "template", counter.route)  # the counter before: a search
        out[path] = {
            "router_us": timeit.timeit(search, number=number) / number * 1e6,
            "counter_us": timeit.timeit(partial(template, routed), number=number) / number * 1e6,
        }
    return out


def describe(repo: Path) -> str:
    """A repository by its folder name and trunk, never by its path on this machine."""
    trunk = json.loads((repo / "trunk" / "trunk.json").read_text())
    return f"{repo.resolve().name} (trunk {trunk['base_model']}, {trunk['num_layers']} layers)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tei-vs-native.json"))
    parser.add_argument("--profile", type=Path, help="folder for py-spy profiles of a last pass")
    args = parser.parse_args()
    texts = (TEXTS * args.texts)[: args.texts]
    tasks = {"embed": "embedding", "topic-zs": "zero-shot"}
    cells = [
        (task, name, request)
        for task, kind in tasks.items()
        for name, request in routes(task, kind, texts).items()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo or tiny_repository(Path(tmp))
        samples: dict[str, dict[str, list[dict[str, float]]]] = {t: {} for t in tasks}
        profiles: dict[str, dict[str, tuple[Path, int]]] = {t: {} for t in tasks}
        env = {"MTS_INTRA_OP_THREADS": "1"}
        proc, url = start_server(repo, Path(tmp) / "server.log", env)
        try:
            for _, _, request in cells:  # warm-up, not recorded
                measure(url, constant(request), 1.0, args.in_flight)
            for round_ in range(args.rounds):
                for task, name, request in rotated(cells, round_):
                    cpu = cpu_seconds(proc.pid)
                    run = measure(url, constant(request), args.seconds, args.in_flight)
                    cpu = cpu_seconds(proc.pid) - cpu
                    samples[task].setdefault(name, []).append(
                        {
                            "p50_ms": run.percentile_ms(50),
                            "p99_ms": run.percentile_ms(99),
                            "requests_per_s": run.requests_per_s,
                            "server_cpu_ms_per_request": 1000 * cpu / len(run.latencies),
                        }
                    )
            if args.profile:  # one more pass, sampled, kept out of the figures above
                args.profile.mkdir(parents=True, exist_ok=True)
                for task, name, request in cells:
                    raw = args.profile / f"{task}-{name}.txt"
                    with spy.record(proc.pid, raw, args.seconds, RATE):
                        run = measure(url, constant(request), args.seconds, args.in_flight)
                    profiles[task][name] = (raw, len(run.latencies))
        finally:
            stop(proc)
        lookups = lookup_us(repo)
    result: dict[str, Any] = {
        "repo": describe(args.repo) if args.repo else "tiny random encoder (support/tiny.py)",
        "in_flight": args.in_flight,
        "texts_per_request": args.texts,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "tasks": {},
    }
    for task, by_route in samples.items():
        native = by_route["native"]
        result["tasks"][task] = {}
        for name, runs in by_route.items():
            figures: dict[str, Any] = {k: statistics.median(s[k] for s in runs) for k in runs[0]}
            for key, label in (
                ("p50_ms", "p50_vs_native"),
                ("requests_per_s", "throughput_vs_native"),
                ("server_cpu_ms_per_request", "server_cpu_vs_native"),
            ):
                # Paired per round: the route and the native route ran minutes apart at most.
                ratios = [r[key] / n[key] for r, n in zip(runs, native, strict=True)]
                figures[label] = statistics.median(ratios)
                figures[f"{label}_range"] = [min(ratios), max(ratios)]
            figures["p50_ms_per_round"] = [s["p50_ms"] for s in runs]
            figures["server_cpu_ms_per_request_per_round"] = [
                s["server_cpu_ms_per_request"] for s in runs
            ]
            result["tasks"][task][name] = figures
    result["route_lookup_us"] = lookups
    if args.profile:
        result["profile_ms_per_request_vs_native"] = {
            task: overhead(by_route) for task, by_route in profiles.items()
        }
    write_results(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
