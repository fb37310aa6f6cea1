"""The training run: one task, one freezing strategy, one seed -> a head archive.

Only the head trains: its own copies of the top layers it owns, and its classifier. The frozen
part below the branch tap runs once per example (``TapSource``), not once per epoch. The recipe
(``training.recipe``): discriminative per-layer rates, warm-up then linear decay, gradient
clipping, optional class weights, early stopping on validation; the best validation epoch is
kept, test metrics are measured on it, and the head is exported through the parity-checked
exporter with everything that made it recorded in head.json. ``progressive`` searches the depth
(``training.progressive``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.modules import Head, Trunk, top_layers
from multitask_serve.modelrepo.types import KINDS, REFERENCE_PRECISION, HeadSpec, Kind
from multitask_serve.training import bootstrap, memory, progressive, recipe
from multitask_serve.training.config import TrainConfig
from multitask_serve.training.data import Split, is_token_split, load_dataset
from multitask_serve.training.features import FeatureStore, rust_tokenizer
from multitask_serve.training.loop import (
    FitData,
    Listener,
    decode,
    encode_split,
    evaluate,
    fit,
    measure,
    predict,
    score,
    seed_everything,
    tap_source,
)
from multitask_serve.training.strategies import strategy, train_top

__all__ = [
    "Listener",
    "RunResult",
    "TrainConfig",
    "cap_eval",
    "evaluate",
    "predict",
    "score",
    "train",
]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    config: TrainConfig
    kind: Kind
    labels: tuple[str, ...]
    branch_layer: int
    validation: dict[str, float]
    test: dict[str, float]
    trainable_params: int
    head_params: int
    train_seconds: float
    peak_rss_mb: float
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    head: Head | None = None
    # Progressive only: per depth tried, its best validation score.
    depth_curve: list[dict[str, Any]] = field(default_factory=list)
    # Per test example, what the bootstrap rescores (``training.bootstrap``).
    test_outcomes: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        """What head.json records under ``training``."""
        summary = {
            "strategy": self.config.strategy,
            "seed": self.config.seed,
            "config": asdict(self.config),
            "data": self.data,
            "validation": self.validation,
            "test": self.test,
            "trainable_params": self.trainable_params,
            "train_seconds": round(self.train_seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "epochs_run": self.epochs_run,
            "history": self.history,
        }
        if self.depth_curve:
            summary["depth_curve"] = self.depth_curve
        return summary


def cap_eval(split: Split[Any], n: int | None) -> Split[Any]:
    """The first ``n`` validation and test examples (splits are shuffled, stratified)."""
    if n is None:
        return split
    capped: Split[Any] = dataclasses.replace(
        split, validation=split.validation[:n], test=split.test[:n]
    )
    return capped


def _saved(store: FeatureStore | None) -> float:
    """Seconds ``store`` has saved its runs so far: computing minus reading what was read back."""
    return 0.0 if store is None else store.computed_seconds - store.loaded_seconds


def train(
    config: TrainConfig,
    encoder: Encoder,
    split: Split[Any] | None = None,
    shared_layers: bool = False,
    store: FeatureStore | None = None,
    listener: Listener | None = None,
) -> RunResult:
    """Train one head. ``shared_layers`` trains the encoder's own top layers in place instead of
    copies: the write-up's risky "backbone unfrozen" case, for the report only. ``store`` shares
    frozen taps with the task's other runs; the run's ``train_seconds`` still counts the taps it
    read back at the time they took to compute. ``listener`` hears each step and epoch."""
    listener = listener or Listener()
    strat = strategy(config.strategy)
    if not strat.trains:
        raise ValueError("the frozen strategy trains nothing: build a zero-shot head instead")
    # head.json records what ran: "auto" becomes this machine's "bf16" or "none".
    config = dataclasses.replace(
        config, mixed_precision=recipe.resolve_mixed_precision(config.mixed_precision)
    )
    generator = seed_everything(config.seed)
    split = split or load_dataset(
        config.data,
        seed=config.split_seed,
        max_train=config.max_train,
        text_column=config.text_column,
        label_column=config.label_column,
    )
    split = cap_eval(split, config.max_eval)
    kind = Kind.TOKEN_CLASSIFICATION if is_token_split(split) else Kind.SEQUENCE_CLASSIFICATION
    L = encoder.num_layers
    memory.reset_peak()
    started = time.perf_counter()
    tokenizer = rust_tokenizer(encoder.tokenizer_json, config.max_length)
    encoded = encode_split(split, tokenizer)
    trunk = Trunk(encoder).eval()
    history: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []
    store = None if shared_layers else store  # trained in place: its taps are not frozen
    saved_before = _saved(store)
    if strat.progressive:
        found = progressive.search(
            config,
            encoder,
            split,
            kind,
            (encoded[0], encoded[1]),
            generator,
            history,
            store,
            listener,
        )
        head, validation, curve = found.head, found.validation, found.curve
        trainable_params = found.trainable_params
    else:
        owned = strat.owned(L)
        layers = (
            nn.ModuleList(encoder.layers[L - owned :])
            if shared_layers
            else top_layers(encoder, owned)
        )
        head = Head(kind, encoder.hidden_size, len(split.labels), layers, pooling=config.pooling)
        strat.apply(head, L)
        best = fit(
            head,
            FitData(encoder, trunk, encoded[0], encoded[1], split, store, listener),
            config,
            config.resolved_epochs(strat),
            generator,
            history,
            strat.initial(L),
            f"{config.task} {config.strategy} seed {config.seed}",
        )
        trainable_params = sum(p.numel() for p in head.parameters() if p.requires_grad)
        head.load_state_dict(best.state)
        validation = best.validation
    # As if alone: taps read back from ``store`` count at what they took to compute, not to read.
    train_seconds = time.perf_counter() - started + _saved(store) - saved_before
    peak = memory.peak_rss_mb()
    branch = L - len(head.layers)
    test_src = tap_source(encoder, trunk, head, encoded[2], config, "test", store)
    gold, pred = decode(
        kind, predict(head, test_src), split.test, split.labels, test_src.encoded.word_tokens
    )
    test = measure(kind, gold, pred, len(split.labels))
    train_top(head, 0)
    return RunResult(
        config=config,
        kind=kind,
        labels=split.labels,
        branch_layer=branch,
        validation=validation,
        test=test,
        trainable_params=trainable_params,
        head_params=sum(p.numel() for p in head.parameters()),
        train_seconds=train_seconds,
        peak_rss_mb=peak,
        epochs_run=len(history),
        history=history,
        head=head.eval(),
        depth_curve=curve,
        test_outcomes=bootstrap.outcomes(gold, pred, KINDS[kind].per_token),
        data={
            "name": split.name,
            "source": split.source,
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
        },
    )


def export_run(
    result: RunResult, exporter: HeadExporter, precision: str = REFERENCE_PRECISION
) -> tuple[HeadSpec, bytes]:
    assert result.head is not None
    return exporter.classification(
        result.config.task, result.head, result.labels, result.summary(), precision
    )
