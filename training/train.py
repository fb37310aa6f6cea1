"""The training loop: one task, one freezing strategy, one seed -> a head archive.

Only the head trains: its own copies of the top layers it owns, and its classifier. The frozen
part below the branch tap runs once per example (``TapSource``), not once per epoch. The best
epoch on the validation split is kept; test metrics are measured on it; the head is exported
through the parity-checked exporter with everything that made it recorded in head.json.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.modules import Head, Trunk, top_layers
from multitask_serve.export.progress import progress
from multitask_serve.modelrepo.types import KINDS, REFERENCE_PRECISION, HeadSpec, Kind
from multitask_serve.training import memory
from multitask_serve.training.data import Split, is_token_split, load_dataset
from multitask_serve.training.features import (
    IGNORE,
    Encoded,
    TapSource,
    encode_texts,
    encode_tokens,
    rust_tokenizer,
)
from multitask_serve.training.metrics import accuracy, entity_scores, macro_f1
from multitask_serve.training.strategies import Strategy, strategy, train_top, unfreeze_next

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    task: str
    data: str  # "sentiment", "topic", "ner", or a CSV/JSONL/CoNLL path
    strategy: str = "top-2"
    seed: int = 0
    # The data split is fixed by its own seed, so runs with different training seeds compare
    # on the same test set.
    split_seed: int = 0
    epochs: int | None = None  # None: 10 for head-only (cheap), 4 for strategies that train layers
    batch_size: int = 32
    layer_lr: float = 1e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    max_length: int = 128
    max_train: int | None = None
    # Validation and test examples used (None: all). Smaller is faster and noisier.
    max_eval: int | None = None
    # Progressive: epochs without a validation gain before one more layer unfreezes.
    patience: int = 1
    cache_limit_mb: int = 4096
    pooling: str = "mean"

    def resolved_epochs(self, strat: Strategy) -> int:
        if self.epochs is not None:
            return self.epochs
        if strat.progressive:
            return 8
        return 10 if strat.owned(12) == 0 else 4


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

    def summary(self) -> dict[str, Any]:
        """What head.json records under ``training``."""
        return {
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


def cap_eval(split: Split[Any], n: int | None) -> Split[Any]:
    """The first ``n`` validation and test examples (splits are shuffled, stratified)."""
    if n is None:
        return split
    capped: Split[Any] = dataclasses.replace(
        split, validation=split.validation[:n], test=split.test[:n]
    )
    return capped


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _encode(split: Split[Any], tokenizer: Any) -> tuple[Encoded, Encoded, Encoded]:
    fn = encode_tokens if is_token_split(split) else encode_texts
    return tuple(
        fn(tokenizer, part, split.labels) for part in (split.train, split.validation, split.test)
    )  # type: ignore[return-value]


def _optimizer(head: Head, config: TrainConfig) -> torch.optim.Optimizer:
    classifier = {id(p) for p in head.classifier.parameters()}
    trainable = [p for p in head.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in classifier], "lr": config.head_lr},
        {"params": [p for p in trainable if id(p) not in classifier], "lr": config.layer_lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay)


def predict(head: Head, source: TapSource) -> list[torch.Tensor]:
    """Per example: class logits (sequence) or per-token logits (token classification)."""
    head.eval()
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for batch in source.batches(shuffle=False):
            logits = head(batch.hidden, batch.mask)
            for row, i in enumerate(batch.index):
                out[i] = (
                    logits[row, : int(batch.mask[row].sum())] if logits.dim() == 3 else logits[row]
                )
    return [out[i] for i in range(len(out))]


def evaluate(
    head: Head, source: TapSource, examples: list[Any], labels: tuple[str, ...]
) -> dict[str, float]:
    return score(head.kind, predict(head, source), examples, labels, source.encoded.word_tokens)


def score(
    kind: Kind,
    logits: Sequence[Any],
    examples: list[Any],
    labels: tuple[str, ...],
    word_tokens: list[list[int | None]] | None = None,
) -> dict[str, float]:
    """Test metrics from per-example logits (torch or numpy), whichever graph produced them."""
    if KINDS[kind].per_token:
        assert word_tokens is not None
        gold, pred = [], []
        for example, rows, words in zip(examples, logits, word_tokens, strict=True):
            ids = rows.argmax(-1).tolist()
            pred.append([labels[ids[t]] if t is not None else "O" for t in words])
            gold.append(list(example.tags))
        return entity_scores(gold, pred)
    gold_ids = [labels.index(e.label) for e in examples]
    pred_ids = [int(row.argmax()) for row in logits]
    return {
        "accuracy": accuracy(gold_ids, pred_ids),
        "macro_f1": macro_f1(gold_ids, pred_ids, len(labels)),
    }


def _score(metrics: dict[str, float]) -> float:
    return metrics.get("entity_f1", metrics.get("macro_f1", 0.0))


def _epoch(
    head: Head,
    source: TapSource,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    desc: str,
) -> float:
    head.train()
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    total, count = 0.0, 0
    batches = list(source.batches(shuffle=True, generator=generator))
    for batch in progress(batches, desc):
        logits = head(batch.hidden, batch.mask)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch.index)
        count += len(batch.index)
    return total / max(count, 1)


def train(
    config: TrainConfig,
    encoder: Encoder,
    split: Split[Any] | None = None,
    shared_layers: bool = False,
) -> RunResult:
    """Train one head. ``shared_layers`` trains the encoder's own top layers in place instead of
    copies: the write-up's risky "backbone unfrozen" case, for the report only."""
    strat = strategy(config.strategy)
    if not strat.trains:
        raise ValueError("the frozen strategy trains nothing: build a zero-shot head instead")
    generator = seed_everything(config.seed)
    split = split or load_dataset(config.data, seed=config.split_seed, max_train=config.max_train)
    split = cap_eval(split, config.max_eval)
    kind = Kind.TOKEN_CLASSIFICATION if is_token_split(split) else Kind.SEQUENCE_CLASSIFICATION
    L = encoder.num_layers
    owned = strat.owned(L)
    layers = (
        nn.ModuleList(encoder.layers[L - owned :]) if shared_layers else top_layers(encoder, owned)
    )
    head = Head(kind, encoder.hidden_size, len(split.labels), layers, pooling=config.pooling)
    strat.apply(head, L)
    trainable = strat.initial(L)

    memory.reset_peak()
    started = time.perf_counter()
    tokenizer = rust_tokenizer(encoder.tokenizer_json, config.max_length)
    trunk = Trunk(encoder).eval()
    sources = [
        TapSource(
            trunk,
            L - owned,
            enc,
            encoder.hidden_size,
            config.batch_size,
            encoder.uses_token_type_ids,
            config.cache_limit_mb << 20,
            desc=f"{name} tap",
        )
        for name, enc in zip(
            ("train", "validation", "test"), _encode(split, tokenizer), strict=True
        )
    ]
    train_src, val_src, test_src = sources
    optimizer = _optimizer(head, config)
    best: tuple[float, dict[str, Any], int, dict[str, float]] | None = None
    history: list[dict[str, Any]] = []
    stale = 0
    epochs = config.resolved_epochs(strat)
    bar = progress(
        range(epochs), f"{config.task} {config.strategy} seed {config.seed}", per_step=True
    )
    for epoch in bar:
        loss = _epoch(head, train_src, optimizer, generator, f"epoch {epoch + 1}")
        val = evaluate(head, val_src, split.validation, split.labels)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(loss, 4),
                "trainable_layers": trainable,
                **{k: round(v, 4) for k, v in val.items()},
            }
        )
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{_score(val):.3f}", layers=trainable)
        if best is None or _score(val) > best[0]:
            best = (_score(val), copy.deepcopy(head.state_dict()), trainable, val)
            stale = 0
            continue
        stale += 1
        if strat.progressive and stale >= config.patience:
            if trainable >= owned:
                break
            trainable = unfreeze_next(head, trainable)
            optimizer = _optimizer(head, config)
            stale = 0
    assert best is not None
    train_seconds = time.perf_counter() - started
    peak = memory.peak_rss_mb()
    trainable_params = sum(p.numel() for p in head.parameters() if p.requires_grad)
    head.load_state_dict(best[1])
    test = evaluate(head, test_src, split.test, split.labels)
    branch = L - owned
    if strat.progressive and best[2] < owned:
        # The lower copies never trained: they equal the trunk's layers. Serve the best head
        # from the tap it really starts at, and pay only for the layers it changed.
        head.layers = nn.ModuleList(list(head.layers)[owned - best[2] :])
        branch = L - best[2]
    train_top(head, 0)
    return RunResult(
        config=config,
        kind=kind,
        labels=split.labels,
        branch_layer=branch,
        validation=best[3],
        test=test,
        trainable_params=trainable_params,
        head_params=sum(p.numel() for p in head.parameters()),
        train_seconds=train_seconds,
        peak_rss_mb=peak,
        epochs_run=len(history),
        history=history,
        head=head.eval(),
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
