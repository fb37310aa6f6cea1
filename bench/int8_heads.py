"""int8 vs fp32 heads: the shipped top-k sentiment and NER heads; quality, speed, size, memory.

The int8 head is what ``mts quantize --head`` (and ``mts train --head-precision int8``) makes:
per-row int8 of the exported fp32 head graph's MatMuls (its own layers and the classifier):
per-channel int8 weights, activations scaled per row at run time (``export/per_row.py``). Both
ways quantize the same traced fp32 graph, so quantizing the repository's stored heads here
measures exactly what training would ship. ``int8-per-batch`` is the method it replaced, ONNX
Runtime's ``quantize_dynamic`` (per-channel weights, activations scaled per batch), measured
beside it.

- Quality: both heads on the test split they were evaluated on at build time (rebuilt from the
  config their head.json records), fed the same taps; once through the fp32 trunk and once
  through the int8 trunk (``mts quantize``). Changed predictions: the share of test texts
  (sentiment) or dataset words (NER) whose predicted label differs from the fp32 head's.
- Batch dependence: each test text sent alone (trunk and head on that text, unpadded) against
  the same text inside its batch of 32 (padded to the batch's longest), the service's invariant.
  ``quantize_dynamic`` scales a MatMul's activations over the whole batch, so its answer moves
  with its companions; per-row scales read only the row.
- Speed: each head alone through the service's session wrapper (serving options), on the fp32
  trunk's taps of real texts (tweets and BBC news sentences), batch 1 and 16; fp32 and int8
  interleaved, the order swapped every round; per round the median of ``--repeats`` runs.
- Memory: resident memory a fresh process gains by loading the head and running it at batch 16
  (each precision in its own process, interleaved over the rounds).

    .venv/bin/python -m bench.int8_heads [--repo model-repo] [--rounds 5] [--repeats 30]
        [--out bench/results/int8-heads.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from bench.heads_vs_models import median_time
from bench.int8_trunk import PER_BATCH, feeds, per_batch, test_split
from bench.pipelines_vs_ours import real_texts
from multitask_serve.export.quantize import INT8, quantize_head_for, quantize_trunk, softmax
from multitask_serve.modelrepo.repository import ModelRepository, StoredHead
from multitask_serve.modelrepo.types import HeadSpec, Kind, TrunkSpec, tap_name
from multitask_serve.service.sessions import HeadSession
from multitask_serve.service.trunk import TrunkSession
from multitask_serve.training.features import rust_tokenizer
from multitask_serve.training.train import score
from support.results import write_results
from support.stats import summary

TASKS = {"sentiment": ("accuracy", "macro_f1"), "ner": ("entity_f1",)}
PRECISIONS = ("fp32", INT8, PER_BATCH)
TRUNKS = ("fp32", INT8)
RSS_BATCH = 16

ROOT = Path(__file__).resolve().parents[1]


def predictions(
    heads: dict[str, HeadSession],
    stored: StoredHead,
    encoded: Any,
    trunk: TrunkSession,
    spec: TrunkSpec,
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """Each head's logits per test example (per real token for NER): in batches of 32 padded to
    their longest, and each text alone (the trunk and the head on that text only)."""
    tap = tap_name(stored.spec.branch_layer)
    per_token = stored.spec.kind is Kind.TOKEN_CLASSIFICATION
    batched: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    alone: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    for start in range(0, len(encoded.ids), 32):
        rows = encoded.ids[start : start + 32]
        batch = feeds(spec, rows)
        hidden = np.asarray(trunk.run(batch, [tap])[tap])
        for name, head in heads.items():
            logits = head.run(hidden, batch["attention_mask"])
            for i, row in enumerate(rows):
                batched[name].append(logits[i, : len(row)] if per_token else logits[i])
        for row in rows:
            one = feeds(spec, [row])
            own_hidden = np.asarray(trunk.run(one, [tap])[tap])
            for name, head in heads.items():
                alone[name].append(head.run(own_hidden, one["attention_mask"])[0])
    return batched, alone


def probability_moved(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(softmax(x) - softmax(y)).max()) for x, y in zip(a, b, strict=True))


def over(a: list[np.ndarray], b: list[np.ndarray], tolerance: float) -> int:
    """How many examples have a probability that moved by more than ``tolerance``."""
    return sum(
        float(np.abs(softmax(x) - softmax(y)).max()) > tolerance for x, y in zip(a, b, strict=True)
    )


def changed_share(
    stored: StoredHead, a: list[np.ndarray], b: list[np.ndarray], encoded: Any
) -> float:
    """Share of texts (NER: dataset words, read where scoring reads them) whose label changed."""
    if stored.spec.kind is not Kind.TOKEN_CLASSIFICATION:
        return float(np.mean([x.argmax() != y.argmax() for x, y in zip(a, b, strict=True)]))
    changed = [
        x[t].argmax() != y[t].argmax()
        for x, y, words in zip(a, b, encoded.word_tokens, strict=True)
        for t in words
        if t is not None
    ]
    return float(np.mean(changed))


def quality(
    repo: ModelRepository,
    stored: StoredHead,
    models: dict[str, bytes],
    trunks: dict[str, TrunkSession],
) -> dict[str, Any]:
    split, encoded = test_split(repo, stored)
    hidden = stored.spec.hidden_size
    heads = {p: HeadSession(m, stored.spec.output_name, hidden) for p, m in models.items()}
    result: dict[str, Any] = {"test_examples": len(split.test), "by_trunk": {}}
    for trunk_precision, trunk in trunks.items():
        logits, alone = predictions(heads, stored, encoded, trunk, repo.read_trunk_spec())
        metrics = {
            p: score(stored.spec.kind, logits[p], split.test, split.labels, encoded.word_tokens)
            for p in heads
        }
        variants = [p for p in heads if p != "fp32"]
        result["by_trunk"][trunk_precision] = {
            "metrics": metrics,
            "vs_fp32_head": {
                p: {
                    "change_points": {
                        m: 100 * (metrics[p][m] - metrics["fp32"][m])
                        for m in TASKS[stored.spec.task]
                    },
                    "changed_predictions": changed_share(
                        stored, logits["fp32"], logits[p], encoded
                    ),
                    "probability_max_abs_diff": probability_moved(logits["fp32"], logits[p]),
                }
                for p in variants
            },
            # Each text alone vs inside its padded batch of 32, same head and trunk: the
            # service's invariant (scores within 1e-5, labels equal).
            "alone_vs_batched": {
                p: {
                    "probability_max_abs_diff": probability_moved(logits[p], alone[p]),
                    "texts_over_1e-5": over(logits[p], alone[p], 1e-5),
                    "changed_predictions": changed_share(stored, logits[p], alone[p], encoded),
                }
                for p in heads
            },
        }
    result["build_time_test"] = stored.spec.training["test"]
    return result


def latency(
    stored: StoredHead,
    models: dict[str, bytes],
    taps: dict[int, tuple[np.ndarray, np.ndarray]],
    rounds: int,
    repeats: int,
) -> dict[str, Any]:
    heads = {
        p: HeadSession(m, stored.spec.output_name, stored.spec.hidden_size)
        for p, m in models.items()
    }
    result: dict[str, Any] = {}
    for batch, (hidden, mask) in taps.items():
        per_round: dict[str, list[float]] = {p: [] for p in heads}
        for r in range(rounds):
            order = PRECISIONS[r % len(PRECISIONS) :] + PRECISIONS[: r % len(PRECISIONS)]
            for p in order:
                run = partial(heads[p].run, hidden, mask)
                per_round[p].append(1000 * median_time(run, repeats))
        result[f"batch_{batch}"] = {
            "tokens_padded": int(mask.shape[1]),
            **{f"{p}_ms": summary(v) for p, v in per_round.items()},
            **{
                f"fp32_over_{p}": summary(
                    [a / b for a, b in zip(per_round["fp32"], per_round[p], strict=True)]
                )
                for p in PRECISIONS[1:]
            },
            "ms_per_round": per_round,
        }
    return result


def rss_child(model: Path, output: str, hidden_size: int) -> None:
    """In a fresh process: resident memory before and after loading and running one head."""

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(field)

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((RSS_BATCH, 32, hidden_size), dtype=np.float32)
    mask = np.ones((RSS_BATCH, 32), dtype=np.int64)
    before = status("VmRSS")
    head = HeadSession(model.read_bytes(), output, hidden_size)
    for _ in range(5):
        head.run(hidden, mask)
    print(
        json.dumps({"before_kib": before, "after_kib": status("VmRSS"), "hwm_kib": status("VmHWM")})
    )


def rss(spec: HeadSpec, paths: dict[str, Path], rounds: int) -> dict[str, Any]:
    per_round: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(rounds):
        for p in PRECISIONS[r % len(PRECISIONS) :] + PRECISIONS[: r % len(PRECISIONS)]:
            cmd = [sys.executable, "-m", "bench.int8_heads", "--rss-child", str(paths[p].resolve())]
            out = subprocess.run(
                [*cmd, spec.output_name, str(spec.hidden_size)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,  # where ``bench`` and ``support`` import from
            ).stdout
            got = json.loads(out)
            per_round[p].append((got["after_kib"] - got["before_kib"]) / 1024)
    return {f"{p}_delta_mib": summary(v) for p, v in per_round.items()} | {
        "delta_mib_per_round": per_round
    }


def sample_taps(
    repo: ModelRepository, spec: TrunkSpec, trunk: TrunkSession, layer: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    texts = real_texts(64)
    tokenizer = rust_tokenizer(repo.tokenizer_path.read_bytes(), spec.max_length)
    encodings = tokenizer.encode_batch(texts)
    taps = {}
    for batch in (1, 16):
        batch_feeds = feeds(spec, [e.ids for e in encodings[:batch]])
        hidden = trunk.run(batch_feeds, [tap_name(layer)])[tap_name(layer)]
        taps[batch] = (np.asarray(hidden), batch_feeds["attention_mask"])
    return taps


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("bench/results/int8-heads.json"))
    p.add_argument(
        "--quality-only",
        action="store_true",
        help="skip speed and memory (quality does not depend on the machine's load)",
    )
    p.add_argument(
        "--rss-child", nargs=3, metavar=("MODEL", "OUTPUT", "HIDDEN"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.rss_child:
        model, output, hidden = args.rss_child
        rss_child(Path(model), output, int(hidden))
        return
    logging.basicConfig(level=logging.WARNING)
    started, load_start = time.time(), load_average()
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "load_average_start": load_start,
        },
        "settings": {
            "rounds": args.rounds,
            "repeats": args.repeats,
            "rss_batch": RSS_BATCH,
            "quality_only": args.quality_only,
        },
        "heads": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        # A copy: the int8 trunk is added to it if the repository has none.
        shutil.copytree(args.repo, Path(tmp) / "repo")
        repo = ModelRepository(Path(tmp) / "repo")
        if INT8 not in repo.read_trunk_spec().variants:
            quantize_trunk(repo)
        spec = repo.read_trunk_spec()
        trunks = {t: TrunkSession(repo.trunk_variant_path(t)) for t in TRUNKS}
        for task in TASKS:
            stored = repo.read_head(task)
            fp32 = stored.model_path.read_bytes()
            t = time.perf_counter()
            int8_spec, int8 = quantize_head_for(repo, stored.spec, fp32)
            seconds = time.perf_counter() - t
            models = {"fp32": fp32, INT8: int8, PER_BATCH: per_batch(fp32)}
            paths = {name: Path(tmp) / f"{task}.{name}.onnx" for name in models}
            for name, model in models.items():
                paths[name].write_bytes(model)
            taps = sample_taps(repo, spec, trunks["fp32"], stored.spec.branch_layer)
            result["heads"][task] = {
                "strategy": stored.spec.training["strategy"],
                "branch_layer": stored.spec.branch_layer,
                "export_check": int8_spec.training["quantization"] | {"seconds": seconds},
                "file_mib": {name: len(m) / 2**20 for name, m in models.items()},
                "quality": quality(repo, stored, models, trunks),
            }
            if not args.quality_only:
                result["heads"][task] |= {
                    "latency": latency(stored, models, taps, args.rounds, args.repeats),
                    "rss": rss(stored.spec, paths, min(args.rounds, 3)),
                }
            print(json.dumps({task: result["heads"][task]}, indent=1))
    result["machine"]["load_average_end"] = load_average()
    result["seconds"] = round(time.time() - started, 1)
    write_results(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
