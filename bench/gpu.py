"""Trunk and heads on a GPU: host copies vs IO binding, fp32 vs fp16, side by side in one run.

    python -m bench.gpu --repo model-repo --device cuda [--texts texts.txt] [--http]

Every section runs its configurations one after the other in this one process, on the same
inputs, and quotes ratios. Sections:
1. the trunk alone (last tap), numpy in and out: the shapes of GPU.md's reference table;
2. trunk + the repository's trained heads (the taps they read), pre-tokenized: taps copied to the
   host between trunk and heads, vs kept on the device (IO binding), vs IO binding + fp16 trunk;
3. fp16 vs fp32 on real texts: largest difference in each tap a head reads and in each head's
   probabilities, and how often the fp16 trunk changes a predicted label;
4. the service's engine end to end (tokenize, trunk once, every head, decode), fp32 vs fp16;
5. with --http: a real ``mts serve`` on the device, 16-text requests for the three tasks.
Runs on the CPU too (``--device cpu``, fp16 and IO binding sections skipped) to check the script.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import tap_name
from multitask_serve.service.sessions import HeadSession, Runtime
from multitask_serve.service.trunk import TrunkSession
from multitask_serve.service.types import Job

TASKS = ("sentiment", "topic", "ner")
SHAPES = ((16, 1), (16, 32), (16, 1024), (128, 32), (128, 256))  # (tokens, texts) as in GPU.md
FALLBACK_TEXTS = [
    "The central bank raised interest rates by half a point on Thursday.",
    "What a brilliant match, the striker scored twice in the final minutes!",
    "I am not sure this phone was worth the money.",
    "Parliament votes on the new climate bill next week.",
    "Taylor Swift plays Madison Square Garden in New York tonight.",
    "worst customer service ever, never flying with them again",
]


def rate(fn: Callable[[], object], texts: int, seconds: float, repeats: int) -> tuple[float, float]:
    """Median texts/s and median ms per call over `repeats` runs of at least `seconds`."""
    fn()  # warm-up: allocations, kernel selection
    rates, latencies = [], []
    for _ in range(repeats):
        calls, started = [], time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            fn()
            calls.append(time.perf_counter() - t0)
        rates.append(len(calls) * texts / (time.perf_counter() - started))
        latencies.append(statistics.median(calls) * 1000)
    return statistics.median(rates), statistics.median(latencies)


def feeds(input_names: tuple[str, ...], tokens: int, texts: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1000, 20000, size=(texts, tokens), dtype=np.int64)
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in input_names:
        out["token_type_ids"] = np.zeros_like(ids)
    return out


class Stack:
    """The repository's trunk and heads as the service builds them, on one runtime."""

    def __init__(self, repo: ModelRepository, runtime: Runtime, precision: str) -> None:
        spec = repo.read_trunk_spec()
        self.trunk = TrunkSession(repo.trunk_model_path, runtime, precision)  # type: ignore[arg-type]
        self.heads = []
        for task in TASKS:
            stored = repo.read_head(task)
            session = HeadSession(
                stored.model_path.read_bytes(), stored.spec.output_name, spec.hidden_size, runtime
            )
            self.heads.append((stored.spec, session))
        self.taps = sorted({tap_name(s.branch_layer) for s, _ in self.heads})

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        taps = self.trunk.run(batch, self.taps)
        return {
            spec.task: session.run(taps[tap_name(spec.branch_layer)], batch["attention_mask"])
            for spec, session in self.heads
        }


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def section_trunk(repo: ModelRepository, runtime: Runtime, args: argparse.Namespace) -> None:
    spec = repo.read_trunk_spec()
    host = Runtime(runtime.device, runtime.device_id, io_binding=False)
    trunk = TrunkSession(repo.trunk_model_path, host)
    last = [tap_name(spec.num_layers)]
    print("\n## 1. Trunk alone, last tap, numpy in and out (fp32)\n")
    print("| tokens | texts | texts/s | ms per batch (p50) |\n|---|---|---|---|")
    for tokens, texts in args.shapes:
        batch = feeds(trunk.input_names, tokens, texts)
        r, ms = rate(lambda b=batch: trunk.run(b, last), texts, args.seconds, args.repeats)
        print(f"| {tokens} | {texts} | {r:,.0f} | {ms:.2f} |")


def section_heads(repo: ModelRepository, runtime: Runtime, args: argparse.Namespace) -> None:
    device = runtime.device
    configs = {
        "host copies, fp32": Stack(repo, Runtime(device, io_binding=False), "fp32"),
        "IO binding, fp32": Stack(repo, Runtime(device, io_binding=True), "fp32"),
        "IO binding, fp16 trunk": Stack(repo, Runtime(device, io_binding=True), "fp16"),
    }
    names = list(configs)
    ratios = ["binding / host", "binding fp16 / host"]
    print(f"\n## 2. Trunk + heads {', '.join(TASKS)}, pre-tokenized: texts/s (ms per batch)\n")
    print("| tokens | texts | " + " | ".join(names + ratios) + " |")
    print("|---" * (2 + len(names) + len(ratios)) + "|")
    stack0 = configs[names[0]]
    for tokens, texts in args.shapes:
        batch = feeds(stack0.trunk.input_names, tokens, texts)
        results = [
            rate(lambda s=stack, b=batch: s.run(b), texts, args.seconds, args.repeats)
            for stack in configs.values()
        ]
        cells = [f"{r:,.0f} ({ms:.2f})" for r, ms in results]
        ratios = [f"{r / results[0][0]:.2f}x" for r, _ in results[1:]]
        print(f"| {tokens} | {texts} | " + " | ".join(cells + ratios) + " |")


def section_parity(
    repo: ModelRepository, device: str, texts: list[str], args: argparse.Namespace
) -> None:
    from multitask_serve.service.tokenize import TextEncoder

    spec = repo.read_trunk_spec()
    encoder = TextEncoder(repo.tokenizer_path, spec.max_length, spec.input_names)
    full = Stack(repo, Runtime(device, io_binding=True), "fp32")  # type: ignore[arg-type]
    half = Stack(repo, Runtime(device, io_binding=True), "fp16")  # type: ignore[arg-type]
    taps_needed = [tap_name(i) for i in range(spec.num_layers + 1)]
    tap_diff = dict.fromkeys(taps_needed, 0.0)
    out_diff = dict.fromkeys(TASKS, 0.0)
    changed = dict.fromkeys(TASKS, 0)
    total = dict.fromkeys(TASKS, 0)
    for start in range(0, len(texts), 64):
        batch = encoder.encode(texts[start : start + 64])
        a = {k: v.numpy() for k, v in full.trunk.run(batch.feeds, taps_needed).items()}
        b = {k: v.numpy() for k, v in half.trunk.run(batch.feeds, taps_needed).items()}
        mask = batch.attention_mask.astype(bool)
        for name in taps_needed:
            tap_diff[name] = max(tap_diff[name], float(np.abs(a[name] - b[name])[mask].max()))
        pa, pb = full.run(batch.feeds), half.run(batch.feeds)
        for task in TASKS:
            x, y = softmax(pa[task]), softmax(pb[task])
            if x.ndim == 3:  # token classification: real tokens only
                x, y = x[mask], y[mask]
            out_diff[task] = max(out_diff[task], float(np.abs(x - y).max()))
            changed[task] += int((x.argmax(-1) != y.argmax(-1)).sum())
            total[task] += len(x)
    print(f"\n## 3. fp16 trunk vs fp32 trunk on {device}, {len(texts)} real texts\n")
    print("| tap | max abs diff (real tokens) |\n|---|---|")
    for name, d in tap_diff.items():
        print(f"| {name} | {d:.2e} |")
    print("\n| head | max abs diff of probabilities | predictions changed |\n|---|---|---|")
    for task in TASKS:
        unit = "tokens" if total[task] > len(texts) else "texts"
        print(f"| {task} | {out_diff[task]:.2e} | {changed[task]} of {total[task]} {unit} |")


def section_engine(
    repo_path: Path, device: str, texts: list[str], args: argparse.Namespace
) -> None:
    from prometheus_client import CollectorRegistry

    from multitask_serve.service.app import create_app
    from multitask_serve.service.settings import Settings

    precisions = ["fp32", "fp16"] if device == "cuda" else ["fp32"]
    engines = {
        p: create_app(
            Settings(repository=repo_path, device=device, trunk_precision=p), CollectorRegistry()
        ).state.services
        for p in precisions
    }
    print("\n## 4. The engine end to end (tokenize, trunk, 3 heads, decode), real texts\n")
    print("| texts per batch | " + " | ".join(f"{p} texts/s (ms)" for p in precisions) + " |")
    print("|---" * (1 + len(precisions)) + "|")
    for size in (1, 32, 256):
        chunk = [texts[i % len(texts)] for i in range(size)]
        cells = []
        for state in engines.values():  # each precision's services: engine and registry
            engine, heads = state.engine, state.registry.loaded(list(TASKS))
            r, ms = rate(
                lambda e=engine, h=heads, c=chunk: e.predict_many([Job(h, c)]),
                size,
                args.seconds,
                args.repeats,
            )
            cells.append(f"{r:,.0f} ({ms:.2f})")
        print(f"| {size} | " + " | ".join(cells) + " |")


def section_http(repo_path: Path, device: str, texts: list[str], args: argparse.Namespace) -> None:
    import httpx

    from bench.http_vs_ort import serving

    body = {"inputs": texts[:16], "tasks": list(TASKS)}
    print(f"\n## 5. mts serve on {device}, 16-text requests for {', '.join(TASKS)}\n")
    print("| trunk | in flight | texts/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for precision in ["fp32", "fp16"] if device == "cuda" else ["fp32"]:
        settings = {"MTS_DEVICE": device, "MTS_TRUNK_PRECISION": precision}
        with serving(repo_path, 128, **settings) as url:
            for concurrency in (1, 16):
                lat: list[float] = []

                async def load(url: str = url, n: int = concurrency, lat: list = lat) -> None:
                    limits = httpx.Limits(max_connections=n)
                    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:
                        deadline = time.perf_counter() + args.seconds * args.repeats

                        async def worker() -> None:
                            while time.perf_counter() < deadline:
                                t0 = time.perf_counter()
                                (await c.post("/predict", json=body)).raise_for_status()
                                lat.append(time.perf_counter() - t0)

                        await asyncio.gather(*(worker() for _ in range(n)))

                started = time.perf_counter()
                asyncio.run(load())
                elapsed = time.perf_counter() - started
                ms = np.array(lat) * 1000
                print(
                    f"| {precision} | {concurrency} | {len(lat) * 16 / elapsed:,.0f} | "
                    f"{np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} |"
                )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--texts", type=Path, help="one text per line (real texts for sections 3-5)")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sections", default="1,2,3,4", help="comma-separated; 5 is the HTTP one")
    p.add_argument("--http", action="store_true", help="also run section 5")
    p.add_argument(
        "--shapes",
        type=lambda v: [tuple(int(x) for x in s.split("x")) for s in v.split(",")],
        default=SHAPES,
        help="tokens x texts for sections 1-2, e.g. 16x1,128x256",
    )
    args = p.parse_args()
    repo = ModelRepository(args.repo)
    runtime = Runtime(args.device)
    runtime.check()
    texts = (
        [t for t in args.texts.read_text().splitlines() if t.strip()]
        if args.texts
        else FALLBACK_TEXTS
    )
    import onnxruntime as ort

    specs = {t: repo.read_head(t).spec for t in TASKS}
    print(
        f"device {args.device}, onnxruntime {ort.__version__}, trunk "
        f"{repo.read_trunk_spec().base_model}, heads "
        + ", ".join(f"{t} ({s.kind}, tap {s.branch_layer})" for t, s in specs.items())
        + f"; median of {args.repeats} runs of >= {args.seconds} s"
    )
    sections = set(args.sections.split(",")) | ({"5"} if args.http else set())
    steps: list[tuple[str, Callable[[], None]]] = [
        ("1", lambda: section_trunk(repo, runtime, args)),
        ("2", lambda: section_heads(repo, runtime, args)),
        ("3", lambda: section_parity(repo, args.device, texts, args)),
        ("4", lambda: section_engine(args.repo, args.device, texts, args)),
        ("5", lambda: section_http(args.repo, args.device, texts, args)),
    ]
    for key, step in steps:
        if key not in sections:
            continue
        try:
            step()
        except Exception as exc:  # one broken section must not cost the others' figures
            print(f"\nsection {key} failed: {type(exc).__name__}: {exc}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
