"""The optimisation recipe: discriminative per-layer learning rates, warm-up then linear decay,
class-weighted loss. The loop in ``training.train`` asks this module for its optimizer, schedule
and loss; the numbers come from ``TrainConfig``.

Per-layer rates follow ULMFiT's discriminative fine-tuning: the top owned layer learns at
``layer_lr``, each layer below it at ``lr_decay`` times the rate of the layer above (lower layers
hold more general features and should move less). The classifier learns at ``head_lr``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from multitask_serve.export.modules import Head
from multitask_serve.training.features import IGNORE

SCHEDULES = ("linear", "constant")
# Mixed precision of the trained layers' forward pass: "bf16" runs it under bfloat16 autocast
# (weights, gradients and optimizer state stay fp32); evaluation and export are always fp32.
# "auto" is bf16 where the CPU multiplies bfloat16 in hardware, none elsewhere.
MIXED_PRECISION = ("none", "bf16", "auto")


def param_groups(
    head: Head, layer_lr: float, head_lr: float, lr_decay: float
) -> list[dict[str, Any]]:
    """One group per trainable owned layer (rate decayed with depth below the top) + classifier."""
    groups: list[dict[str, Any]] = []
    owned = list(head.layers)
    for depth, layer in enumerate(reversed(owned)):  # depth 0 = the top layer
        params = [p for p in layer.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": layer_lr * lr_decay**depth})
    classifier = [p for p in head.classifier.parameters() if p.requires_grad]
    groups.append({"params": classifier, "lr": head_lr})
    return groups


def optimizer(
    head: Head, layer_lr: float, head_lr: float, lr_decay: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW over the parameters that require grad, and only those."""
    return torch.optim.AdamW(
        param_groups(head, layer_lr, head_lr, lr_decay), weight_decay=weight_decay
    )


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """Multiplier on every group's rate at optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up over the first ``warmup`` fraction of steps, then (``linear``) a linear decay
    to zero at ``total`` or (``constant``) the full rate.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(total - warm, 1))


def scheduler(
    opt: torch.optim.Optimizer, total_steps: int, warmup: float, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, total_steps, warmup, schedule)  # an unknown schedule fails here, not mid-epoch
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, warmup, schedule)
    )


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16). Without
    either, bfloat16 autocast converts in software and is slower than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_mixed_precision(mixed_precision: str) -> str:
    """``mixed_precision`` with "auto" decided for this machine: "bf16" or "none"."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"unknown mixed precision {mixed_precision!r} (known: {', '.join(MIXED_PRECISION)})"
        )
    if mixed_precision == "auto":
        return "bf16" if native_bf16() else "none"
    return mixed_precision


def autocast(mixed_precision: str) -> torch.autocast:
    """The context a training step's forward pass runs in."""
    mixed_precision = resolve_mixed_precision(mixed_precision)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision == "bf16")


def class_weights(labels: Sequence[int] | Sequence[Sequence[int]], num_labels: int) -> list[float]:
    """Balanced weights ``n / (k * count)`` per class from the training labels (per token for
    tagging, unlabelled pieces left out); a class absent from train gets weight 1."""
    flat: list[int] = []
    for label in labels:
        if isinstance(label, int):
            flat.append(label)
        else:
            flat.extend(t for t in label if t != IGNORE)
    counts = Counter(flat)
    n = len(flat)
    return [n / (num_labels * counts[c]) if counts[c] else 1.0 for c in range(num_labels)]


def loss_function(weights: list[float] | None) -> nn.CrossEntropyLoss:
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
