"""Resident memory over a long run of mixed traffic: flat after warm-up, or drifting?

One ``mts serve`` of the repository with this tree's defaults and ``MTS_MEMORY_LIMIT_MB`` as the
manifests set it (2 GiB container), driven for ``--seconds`` by closed-loop clients of every kind
at once: single texts to each task (native, TEI, OIP, OpenAI), 8-text all-task requests, now and
then the worst request the limits allow (64 texts of the served length, every task), and a
zero-shot head hot-added and removed every minute. The server's resident memory is sampled every
second. Drift = the median of the last ``--window`` seconds over the median of the ``--window``
seconds after warm-up (``--warmup``). Writes the samples, the figures and an SVG plot of the curve.

    .venv/bin/python -m bench.memory_soak [--repo model-repo] [--seconds 1800]
        [--out bench/results/memory-soak.json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.memory_bound import LIMIT_MB, worst_body
from bench.pipelines_vs_ours import real_texts
from support.machine import machine
from support.results import write_results
from support.servers import memory_mb, rss_mib, start_server
from support.servers import stop as stop_server

TOKEN = "soak-admin-token"
TASKS = ["sentiment", "topic", "ner"]
TARGET_DRIFT = 0.05


def request(rng: random.Random, texts: list[str]) -> tuple[str, dict[str, Any]]:
    """One request of the mix, on any wire format."""
    text = rng.choice(texts)
    kind = rng.random()
    if kind < 0.35:
        return f"/predict/{rng.choice(TASKS)}", {"inputs": text}
    if kind < 0.5:
        return "/predict", {"inputs": rng.sample(texts, 8), "tasks": TASKS}
    if kind < 0.65:
        return "/tei/embed", {"inputs": rng.sample(texts, 4), "truncate": True}
    if kind < 0.8:
        data = rng.sample(texts, 2)
        tensor = {"name": "text", "datatype": "BYTES", "shape": [2], "data": data}
        return f"/v2/models/{rng.choice(TASKS)}/infer", {"inputs": [tensor]}
    if kind < 0.95:
        return "/v1/embeddings", {"model": "embed", "input": rng.sample(texts, 3)}
    return "/tei/topic-zs", {"inputs": text}


def svg(samples: list[tuple[float, float]], warmup: float, limit: float) -> str:
    """The RSS curve as a self-contained SVG: time (s) across, MiB up, the limit's share dashed."""
    width, height, pad = 900, 360, 50
    end = max(t for t, _ in samples)
    top = max(max(m for _, m in samples), 0.8 * limit) * 1.05

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * t / end

    def y(m: float) -> float:
        return height - pad - (height - 2 * pad) * m / top

    points = " ".join(f"{x(t):.1f},{y(m):.1f}" for t, m in samples)
    ticks = "".join(
        f'<text x="{pad - 8}" y="{y(m) + 4:.1f}" font-size="11" text-anchor="end">{m:.0f}</text>'
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(m):.1f}" y2="{y(m):.1f}" stroke="#eee"/>'
        for m in range(0, int(top), 250)
    )
    minutes = "".join(
        f'<text x="{x(t):.1f}" y="{height - pad + 16}" font-size="11" text-anchor="middle">'
        f"{t / 60:.0f}</text>"
        for t in range(0, int(end) + 1, 300)
    )
    share = 0.8 * limit
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>{ticks}{minutes}'
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(share):.1f}" y2="{y(share):.1f}" '
        f'stroke="#c33" stroke-dasharray="6,4"/>'
        f'<text x="{width - pad}" y="{y(share) - 6:.1f}" font-size="11" text-anchor="end" '
        f'fill="#c33">80% of the {limit:g} MiB limit</text>'
        f'<line x1="{x(warmup):.1f}" x2="{x(warmup):.1f}" y1="{pad}" y2="{height - pad}" '
        f'stroke="#999" stroke-dasharray="2,3"/>'
        f'<polyline fill="none" stroke="#236" stroke-width="1.2" points="{points}"/>'
        f'<text x="{width / 2}" y="{height - 12}" font-size="12" text-anchor="middle">minutes'
        f'</text><text x="14" y="{height / 2}" font-size="12" transform="rotate(-90 14 '
        f'{height / 2})" text-anchor="middle">resident MiB</text></svg>\n'
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--seconds", type=float, default=1800)
    p.add_argument("--warmup", type=float, default=300)
    p.add_argument("--window", type=float, default=300)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--worst-every", type=float, default=60, help="seconds between worst requests")
    p.add_argument("--out", type=Path, default=Path("bench/results/memory-soak.json"))
    args = p.parse_args()
    texts = real_texts(900)
    statuses: Counter[str] = Counter()
    samples: list[tuple[float, float]] = []
    env = {"MTS_MEMORY_LIMIT_MB": str(LIMIT_MB), "MTS_ADMIN_TOKEN": TOKEN}
    with tempfile.TemporaryDirectory(prefix="mts-soak-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(args.repo, copy)
        proc, url = start_server(copy, Path(tmp) / "server.log", env)
        admin = httpx.Client(
            base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        pid = proc.pid
        try:
            stop = threading.Event()
            started = time.monotonic()

            def client(seed: int) -> None:
                rng = random.Random(seed)
                with httpx.Client(base_url=url, timeout=600) as c:
                    while not stop.is_set():
                        path, body = request(rng, texts)
                        statuses[f"{path.split('/')[1]} {c.post(path, json=body).status_code}"] += 1

            def worst() -> None:
                with httpx.Client(base_url=url, timeout=600) as c:
                    while not stop.wait(args.worst_every):
                        statuses[f"worst {c.post('/predict', json=worst_body()).status_code}"] += 1

            def churn() -> None:
                labels = {"good": "good great happy love", "bad": "bad awful sad hate"}
                while not stop.wait(30):
                    r = admin.post("/admin/heads/soak-zs/zero-shot", json={"labels": labels})
                    statuses[f"hot-add {r.status_code}"] += 1
                    if stop.wait(30):
                        break
                    statuses[f"remove {admin.delete('/admin/heads/soak-zs').status_code}"] += 1

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            threads += [threading.Thread(target=worst), threading.Thread(target=churn)]
            for t in threads:
                t.start()
            try:
                while (now := time.monotonic() - started) < args.seconds:
                    samples.append((round(now, 1), round(rss_mib(pid), 1)))
                    if len(samples) % 60 == 0:
                        seen = dict(statuses)
                        print(f"{now / 60:.0f} min: {samples[-1][1]} MiB {seen}", file=sys.stderr)
                    time.sleep(1.0)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            peak = memory_mb(pid)["VmHWM"]
        finally:
            stop_server(proc)
    warm = [m for t, m in samples if args.warmup <= t < args.warmup + args.window]
    last = [m for t, m in samples if t >= args.seconds - args.window]
    after_warmup = [m for t, m in samples if t >= args.warmup]
    drift = statistics.median(last) / statistics.median(warm) - 1
    results = {
        "machine": machine(),
        "settings": {**vars(args), "repo": str(args.repo), "out": str(args.out)},
        "limit_mb": LIMIT_MB,
        "statuses": dict(statuses),
        "rss_mib": {
            "after warm-up, median": statistics.median(warm),
            "last window, median": statistics.median(last),
            "after warm-up, min": min(after_warmup),
            "after warm-up, max": max(after_warmup),
            "peak (VmHWM)": peak,
        },
        "drift": round(drift, 4),
        "target_drift": TARGET_DRIFT,
        "met": abs(drift) <= TARGET_DRIFT and peak <= 0.8 * LIMIT_MB,
        "plot": args.out.with_suffix(".svg").name,
        "samples": samples,
    }
    write_results(args.out, results)
    args.out.with_suffix(".svg").write_text(svg(samples, args.warmup, LIMIT_MB))
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
