"""The freezing-strategy report: every strategy of the write-up, on three real tasks, over seeds.

``mts report`` runs it and writes ``reports/results.json``, ``reports/REPORT.md`` and PNG plots.
Each (task, strategy, seed) is one ``train`` run; the frozen strategy is the zero-shot head (no
training). Serving cost is measured for seed 0's exported head against the trunk, in one process.
Scenario 3 of the write-up is measured directly: task B trains top layers *shared* with task A's
frozen head, versus per-task copies (this design).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.modules import Trunk, mean_pool
from multitask_serve.export.samples import encode, tokenizer_from_json
from multitask_serve.export.trunk import export_trunk
from multitask_serve.modelrepo.graphs import zero_shot_graph
from multitask_serve.training import bootstrap, memory
from multitask_serve.training.data import Split, is_token_split, load_dataset
from multitask_serve.training.features import (
    FeatureStore,
    TapSource,
    encode_texts,
    rust_tokenizer,
)
from multitask_serve.training.metrics import accuracy, macro_f1
from multitask_serve.training.recipe import resolve_mixed_precision
from multitask_serve.training.serving_cost import CostMeter
from multitask_serve.training.strategies import strategy
from multitask_serve.training.train import (
    RunResult,
    TrainConfig,
    cap_eval,
    evaluate,
    export_run,
    predict,
    train,
)

log = logging.getLogger(__name__)

STRATEGIES = ("frozen", "head-only", "top-1", "top-2", "top-3", "progressive", "full")

# Label descriptions for the frozen (zero-shot) rows, keyed by each dataset's labels.
ZERO_SHOT = {
    "sentiment": {
        "negative": "I am unhappy, this is bad, awful and disappointing.",
        "neutral": "This is a plain factual statement with no feeling either way.",
        "positive": "I am happy, this is good, great and delightful.",
    },
    "topic": {
        "business": "business, companies, markets, trade, finance and the economy",
        "entertainment": "entertainment, films, music, television, actors and celebrities",
        "politics": "politics, government, elections, ministers and parliament",
        "sports": "sport, football, tennis, athletes, teams and matches",
        "tech": "technology, computers, software, the internet and gadgets",
    },
}


@dataclass(frozen=True)
class ReportTask:
    data: str
    max_length: int
    # Most epochs for top-k and full, and per depth for progressive (head-only: 10).
    epochs: int
    max_train: int | None = None
    max_eval: int | None = None
    layer_lr: float = 1e-4
    head_lr: float = 2e-3
    # Progressive: stop after this many deeper depths without a new best (None: go to full depth).
    depth_patience: int | None = None
    # The trained layers' forward pass: "auto" is bf16 autocast where the CPU has bf16 units.
    mixed_precision: str = "auto"


# Realistic data: 8,000 training tweets for sentiment, the full training splits of topic and NER,
# every validation and test example: 70 minutes for 3 seeds on a 2-core CPU with bf16 units
# (reports/REPORT.md), of which sharing frozen taps (``FeatureStore``) saved 14.5.
DEFAULT_TASKS = {
    "sentiment": ReportTask("sentiment", max_length=48, epochs=2, max_train=8000, depth_patience=1),
    "topic": ReportTask("topic", max_length=96, epochs=2, depth_patience=1),
    "ner": ReportTask("ner", max_length=48, epochs=4, layer_lr=2e-4, head_lr=5e-3),
}
# ``mts report --quick``: a small sample of each task, for a first look. Its differences between
# strategies mostly sit inside the test noise the report prints.
QUICK_TASKS = {
    "sentiment": ReportTask("sentiment", max_length=48, epochs=3, max_train=800, max_eval=400),
    "topic": ReportTask("topic", max_length=96, epochs=3, max_train=300, max_eval=150),
    "ner": ReportTask("ner", max_length=48, epochs=5, max_train=800, layer_lr=2e-4, head_lr=5e-3),
}


def task_split(task: ReportTask, split_seed: int = 0) -> Split[Any]:
    split = load_dataset(task.data, seed=split_seed, max_train=task.max_train)
    return cap_eval(split, task.max_eval)


def zero_shot_run(
    encoder: Encoder, split: Split[Any], descriptions: dict[str, str], max_length: int
) -> dict[str, Any]:
    """Scenario 1: nothing trains; labels are scored by cosine to their descriptions."""
    memory.reset_peak()
    started = time.perf_counter()
    trunk = Trunk(encoder).eval()
    tokenizer = tokenizer_from_json(encoder.tokenizer_json, max_length)
    types = encoder.uses_token_type_ids

    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 64):
            feeds = encode(tokenizer, texts[i : i + 64], types)
            with torch.no_grad():
                hidden = trunk(*feeds.values())[-1]
            out.append(F.normalize(mean_pool(hidden, feeds["attention_mask"]), dim=-1))
        return torch.cat(out)

    labels = split.labels
    label_vectors = embed([descriptions[label] for label in labels])
    graph = zero_shot_graph(label_vectors.numpy())
    scores = embed([e.text for e in split.test]) @ label_vectors.T
    pred = scores.argmax(-1).tolist()
    gold = [labels.index(e.label) for e in split.test]
    return {
        "test": {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, len(labels))},
        "outcomes": bootstrap.class_outcomes(gold, pred),
        "trainable_params": 0,
        "train_seconds": time.perf_counter() - started,
        "peak_rss_mb": memory.peak_rss_mb(),
        "graph": graph,
        "branch_layer": encoder.num_layers,
    }


def _row(result: RunResult) -> dict[str, Any]:
    return {
        "test": result.test,
        "validation": result.validation,
        "trainable_params": result.trainable_params,
        "head_params": result.head_params,
        "train_seconds": result.train_seconds,
        "peak_rss_mb": result.peak_rss_mb,
        "branch_layer": result.branch_layer,
        "epochs_run": result.epochs_run,
        "depth_curve": result.depth_curve,
    }


def scenario_three(
    encoder: Encoder, a: ReportTask, b: ReportTask, k: int, seed: int = 0
) -> dict[str, Any]:
    """Task A's frozen head while task B trains top-k layers: shared versus per-task copies.

    The write-up's example is A = sentiment, B = NER: token tagging pulls the shared top layers
    far from what a sentence-level head read. Reported: A's metric before and after, the share
    of A's test predictions that changed and the largest change in A's logits (with per-task
    copies all of these must be exactly 0).
    """
    split_a = task_split(a)
    config_a = TrainConfig(
        task="a",
        data=a.data,
        strategy="head-only",
        seed=seed,
        max_length=a.max_length,
        epochs=10,
        head_lr=a.head_lr,
        mixed_precision=a.mixed_precision,
    )
    result_a = train(config_a, encoder, split_a)
    assert result_a.head is not None
    head_a = result_a.head
    split_b = task_split(b)
    config_b = TrainConfig(
        task="b",
        data=b.data,
        strategy=f"top-{k}",
        seed=seed,
        max_length=b.max_length,
        epochs=b.epochs,
        layer_lr=b.layer_lr,
        head_lr=b.head_lr,
        mixed_precision=b.mixed_precision,
    )

    def quality_a(enc: Encoder) -> tuple[dict[str, float], list[torch.Tensor]]:
        tokenizer = rust_tokenizer(enc.tokenizer_json, a.max_length)
        source = TapSource(
            Trunk(enc).eval(),
            enc.num_layers,
            encode_texts(tokenizer, split_a.test, split_a.labels),
            enc.hidden_size,
            64,
            enc.uses_token_type_ids,
            4 << 30,
        )
        return evaluate(head_a, source, split_a.test, split_a.labels), predict(head_a, source)

    before, logits_before = quality_a(encoder)
    # Per-task copies (this design): B trains its own copies; the encoder A reads is untouched.
    copies_b = train(config_b, encoder, split_b)
    after_copies, logits_copies = quality_a(encoder)
    # Shared and unfrozen (the write-up's risky case): B trains the encoder's own top layers.
    shared_encoder = dataclasses.replace(encoder, model=copy.deepcopy(encoder.model))
    shared_b = train(config_b, shared_encoder, split_b, shared_layers=True)
    after_shared, logits_shared = quality_a(shared_encoder)

    def max_change(logits: list[torch.Tensor]) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(logits, logits_before, strict=True))

    gold_a = [split_a.labels.index(e.label) for e in split_a.test]
    counts = bootstrap.draws(len(gold_a))

    def a_outcomes(logits: list[torch.Tensor]) -> np.ndarray:
        return bootstrap.class_outcomes(gold_a, [int(x.argmax()) for x in logits])

    def a_change(logits: list[torch.Tensor]) -> dict[str, float | bool]:
        """A's macro-F1 change, with its paired bootstrap interval on A's test set."""
        after, before = [a_outcomes(logits)], [a_outcomes(logits_before)]
        return bootstrap.difference(after, before, counts, len(split_a.labels))

    def changed(logits: list[torch.Tensor]) -> float:
        """Share of A's test predictions (argmax labels) that differ from before B trained."""
        pairs = zip(logits, logits_before, strict=True)
        return sum(int(x.argmax()) != int(y.argmax()) for x, y in pairs) / len(logits)

    return {
        "task_a": a.data,
        "task_b": b.data,
        "k": k,
        "a_before": before,
        "copies": {
            "a_after": after_copies,
            "b_test": copies_b.test,
            "a_logits_max_abs_change": max_change(logits_copies),
            "a_predictions_changed": changed(logits_copies),
            "a_change": a_change(logits_copies),
        },
        "shared": {
            "a_after": after_shared,
            "b_test": shared_b.test,
            "a_logits_max_abs_change": max_change(logits_shared),
            "a_predictions_changed": changed(logits_shared),
            "a_change": a_change(logits_shared),
        },
    }


def run_report(
    encoder: Encoder,
    tasks: dict[str, ReportTask] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    strategies: tuple[str, ...] = STRATEGIES,
    scenario: tuple[str, str] | None = ("sentiment", "ner"),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    tasks = DEFAULT_TASKS if tasks is None else tasks
    trunk_spec, trunk_model = export_trunk(encoder)
    exporter = HeadExporter(encoder, trunk_spec)
    results: dict[str, Any] = {"tasks": {}, "machine": _machine(), "seeds": list(seeds)}
    started = time.perf_counter()
    for name, task in tasks.items():
        split = task_split(task)
        meter = CostMeter(trunk_model, _cost_batch(exporter, split))
        # The task's frozen taps, computed once and read back by its other seeds and strategies.
        taps = tempfile.TemporaryDirectory(prefix="mts-report-taps-")
        store = FeatureStore(Path(taps.name))
        rows: dict[str, list[dict[str, Any]]] = {}
        runs: dict[str, list[np.ndarray]] = {}  # per strategy, per seed: test outcomes
        for strat in strategies:
            if strat == "frozen":
                if is_token_split(split) or name not in ZERO_SHOT:
                    continue
                row = zero_shot_run(encoder, split, ZERO_SHOT[name], task.max_length)
                row["serving_ratio"] = meter.head_ratio(row.pop("graph"), encoder.num_layers)
                rows[strat], runs[strat] = [row], [row.pop("outcomes")]
                progress(f"{name} frozen: {rows[strat][0]['test']}")
                continue
            rows[strat] = []
            for seed in seeds:
                config = run_config(name, task, strat, seed)
                result = train(config, encoder, split, store=store)
                assert result.test_outcomes is not None
                runs.setdefault(strat, []).append(result.test_outcomes)
                row = _row(result)
                if seed == seeds[0]:
                    spec, model = export_run(result, exporter)
                    row["parity_max_abs_diff"] = spec.parity_max_abs_diff
                    row["serving_ratio"] = meter.head_ratio(model, spec.branch_layer)
                rows[strat].append(row)
                progress(
                    f"{name} {strat} seed {seed}: {result.test} "
                    f"({result.train_seconds:.0f} s, {time.perf_counter() - started:.0f} s in)"
                )
        results["tasks"][name] = {
            "config": dataclasses.asdict(task),
            # What "auto" became on this machine.
            "mixed_precision": resolve_mixed_precision(task.mixed_precision),
            "data": split.source,
            "sizes": [len(split.train), len(split.validation), len(split.test)],
            "trunk_seconds": meter.trunk_seconds(),
            "rows": rows,
            "bootstrap": intervals(runs, len(split.labels), len(split.test)),
            # Taps read back instead of computed, and the seconds that saved (reading included).
            "taps_reused": store.hits,
            "taps_seconds_saved": store.computed_seconds - store.loaded_seconds,
        }
        taps.cleanup()
    if scenario is not None:
        a, b = (tasks[scenario[0]], tasks[scenario[1]])
        results["scenario3"] = scenario_three(encoder, a, b, k=2)
        progress(f"scenario 3: {json.dumps(results['scenario3'])}")
    results["total_seconds"] = time.perf_counter() - started
    return results


def run_config(name: str, task: ReportTask, strat: str, seed: int) -> TrainConfig:
    """How the report trains ``task`` under strategy ``strat`` with ``seed``."""
    return TrainConfig(
        task=name,
        data=task.data,
        strategy=strat,
        seed=seed,
        max_length=task.max_length,
        max_train=task.max_train,
        max_eval=task.max_eval,
        layer_lr=task.layer_lr,
        head_lr=task.head_lr,
        epochs=None if strategy(strat).owned(12) == 0 else task.epochs,
        depth_patience=task.depth_patience,
        mixed_precision=task.mixed_precision,
    )


def intervals(runs: dict[str, list[np.ndarray]], num_labels: int, n: int) -> dict[str, Any]:
    """Per strategy: its seed-mean test metric with a bootstrap interval, and its difference from
    full fine-tuning on the same resamples."""
    counts = bootstrap.draws(n)
    out: dict[str, Any] = {
        "resamples": bootstrap.RESAMPLES,
        "level": bootstrap.LEVEL,
        "intervals": {s: bootstrap.interval(r, counts, num_labels) for s, r in runs.items()},
    }
    if "full" in runs:
        out["vs_full"] = {
            s: bootstrap.difference(r, runs["full"], counts, num_labels)
            for s, r in runs.items()
            if s != "full"
        }
    return out


def _cost_batch(exporter: HeadExporter, split: Split[Any]) -> dict[str, np.ndarray]:
    """16 texts of the task, padded, as the trunk's feeds."""
    texts = (
        [" ".join(e.tokens) for e in split.test[:16]]
        if is_token_split(split)
        else [e.text for e in split.test[:16]]
    )
    feeds = encode(exporter.tokenizer, texts, "token_type_ids" in exporter.trunk_spec.input_names)
    return {k: v.numpy() for k, v in feeds.items()}


def _machine() -> dict[str, Any]:
    import os

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_results(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return path
