"""The pieces of a training run: cached tap sources, one epoch, fitting with early stopping on
validation, prediction and scoring. ``training.train`` (fixed depth) and ``training.progressive``
(depth search) are both made of these.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.modules import Head, Trunk
from multitask_serve.export.progress import progress
from multitask_serve.modelrepo.types import KINDS, Kind
from multitask_serve.training import recipe
from multitask_serve.training.config import TrainConfig
from multitask_serve.training.data import Split, is_token_split
from multitask_serve.training.features import (
    Encoded,
    FeatureStore,
    TapSource,
    encode_texts,
    encode_tokens,
)
from multitask_serve.training.metrics import accuracy, entity_scores, macro_f1


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def encode_split(split: Split[Any], tokenizer: Any) -> tuple[Encoded, Encoded, Encoded]:
    fn = encode_tokens if is_token_split(split) else encode_texts
    return tuple(
        fn(tokenizer, part, split.labels) for part in (split.train, split.validation, split.test)
    )  # type: ignore[return-value]


def tap_source(
    encoder: Encoder,
    trunk: Trunk,
    head: Head,
    encoded: Encoded,
    config: TrainConfig,
    name: str,
    store: FeatureStore | None = None,
) -> TapSource:
    """What ``head`` reads for ``encoded``: its branch tap, pooled once where it owns no layers."""
    branch = encoder.num_layers - len(head.layers)
    pooled = not len(head.layers) and head.pooling != "none"
    return TapSource(
        trunk,
        branch,
        encoded,
        encoder.hidden_size,
        config.batch_size,
        encoder.uses_token_type_ids,
        config.cache_limit_mb << 20,
        desc=f"{name} tap {branch}",
        pooling=head.pooling if pooled else None,
        group_by_length=config.group_by_length,
        store=store,
    )


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


def decode(
    kind: Kind,
    logits: Sequence[Any],
    examples: list[Any],
    labels: tuple[str, ...],
    word_tokens: list[list[int | None]] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Gold and predicted answers: class ids per example, or BIO tags per word for tagging."""
    if KINDS[kind].per_token:
        assert word_tokens is not None
        gold, pred = [], []
        for example, rows, words in zip(examples, logits, word_tokens, strict=True):
            ids = rows.argmax(-1).tolist()
            pred.append([labels[ids[t]] if t is not None else "O" for t in words])
            gold.append(list(example.tags))
        return gold, pred
    return [labels.index(e.label) for e in examples], [int(row.argmax()) for row in logits]


def measure(kind: Kind, gold: list[Any], pred: list[Any], num_labels: int) -> dict[str, float]:
    """Metrics of decoded answers (``decode``)."""
    if KINDS[kind].per_token:
        return entity_scores(gold, pred)
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, num_labels)}


def score(
    kind: Kind,
    logits: Sequence[Any],
    examples: list[Any],
    labels: tuple[str, ...],
    word_tokens: list[list[int | None]] | None = None,
) -> dict[str, float]:
    """Test metrics from per-example logits (torch or numpy), whichever graph produced them."""
    return measure(kind, *decode(kind, logits, examples, labels, word_tokens), len(labels))


def main_score(metrics: dict[str, float]) -> float:
    """The one number early stopping and depth choice compare: entity F1 or macro-F1."""
    return metrics.get("entity_f1", metrics.get("macro_f1", 0.0))


@dataclass
class Best:
    score: float
    state: dict[str, torch.Tensor]
    validation: dict[str, float]
    epoch: int


def _ignore(*_: Any) -> None:
    pass


@dataclass(frozen=True)
class Listener:
    """What a run tells as it goes, beside its progress lines: for a caller that follows it from
    another process (``mts train-pending`` reports to the server that started it). Counts start
    at 1 and are within one fit (a progressive run fits once per depth)."""

    # After each optimizer step: (epoch, epochs, step, steps in the epoch).
    step: Callable[[int, int, int, int], None] = _ignore
    # After each epoch's validation: (epoch, epochs, the epoch's history record).
    epoch: Callable[[int, int, dict[str, Any]], None] = _ignore


@dataclass
class FitData:
    """What a fit reads: the frozen trunk, the tap its head branches at, encoded train and
    validation examples, and the split they came from."""

    encoder: Encoder
    trunk: Trunk
    train: Encoded
    validation: Encoded
    split: Split[Any]
    # Taps shared with the other runs of the task (``mts report``), or None.
    store: FeatureStore | None = None
    listener: Listener = field(default_factory=Listener)


def fit(
    head: Head,
    data: FitData,
    config: TrainConfig,
    epochs: int,
    generator: torch.Generator,
    history: list[dict[str, Any]],
    trainable: int,
    desc: str,
) -> Best:
    """Train ``head``'s trainable parameters (it reads tap L - its layers) for up to ``epochs``,
    stopping after ``config.patience`` epochs without a validation gain; returns the best
    epoch's state."""
    split = data.split
    train_src = tap_source(data.encoder, data.trunk, head, data.train, config, "train", data.store)
    val_src = tap_source(
        data.encoder, data.trunk, head, data.validation, config, "validation", data.store
    )
    opt = recipe.optimizer(
        head, config.layer_lr, config.head_lr, config.lr_decay, config.weight_decay
    )
    steps = epochs * -(-len(train_src.encoded.ids) // config.batch_size)
    sched = recipe.scheduler(opt, steps, config.warmup, config.schedule)
    weights = (
        recipe.class_weights(train_src.encoded.labels, len(split.labels))
        if config.class_weights
        else None
    )
    loss_fn = recipe.loss_function(weights)
    best: Best | None = None
    stale = 0
    bar = progress(range(epochs), desc, per_step=True)
    # Resolved once: an unknown value fails here, not mid-epoch.
    precision = recipe.resolve_mixed_precision(config.mixed_precision)
    step = Step(opt, sched, loss_fn, config.grad_clip, precision)
    for epoch in bar:
        stepped = functools.partial(data.listener.step, epoch + 1, epochs)
        loss = _epoch(head, train_src, step, generator, epoch, stepped)
        val = evaluate(head, val_src, split.validation, split.labels)
        history.append(
            {
                "epoch": len(history) + 1,
                "loss": round(loss, 4),
                "trainable_layers": trainable,
                **{k: round(v, 4) for k, v in val.items()},
            }
        )
        data.listener.epoch(epoch + 1, epochs, history[-1])
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{main_score(val):.3f}", layers=trainable)
        if best is None or main_score(val) > best.score:
            best = Best(main_score(val), copy.deepcopy(head.state_dict()), val, len(history))
            stale = 0
            continue
        stale += 1
        if config.patience is not None and stale >= config.patience:
            break
    assert best is not None
    return best


@dataclass
class Step:
    """How one optimizer step is taken."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    grad_clip: float | None
    mixed_precision: str  # "bf16" or "none", already resolved


def _epoch(
    head: Head,
    source: TapSource,
    step: Step,
    generator: torch.Generator,
    epoch: int,
    stepped: Callable[[int, int], None] = _ignore,
) -> float:
    """One pass over ``source``; ``stepped(done, steps)`` after each optimizer step."""
    head.train()
    total, count = 0.0, 0
    opt = step.opt
    params = [p for group in opt.param_groups for p in group["params"]]
    batches = list(source.batches(shuffle=True, generator=generator))
    for done, batch in enumerate(progress(batches, f"epoch {epoch + 1}"), start=1):
        with recipe.autocast(step.mixed_precision):
            logits = head(batch.hidden, batch.mask)
        logits = logits.float()
        loss = step.loss_fn(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, step.grad_clip)
        opt.step()
        step.sched.step()
        total += float(loss.detach()) * len(batch.index)
        count += len(batch.index)
        stepped(done, len(batches))
    return total / max(count, 1)
