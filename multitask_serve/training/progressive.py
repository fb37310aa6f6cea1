"""Progressive unfreezing as a depth search: how deep must this task go?

It starts with a copy of the top layer trainable (depth 1, reading tap L-1). When validation stops
improving at a depth (``patience`` epochs without a gain), the best state of that depth is kept and
one more layer is unfrozen: a fresh copy of the next trunk layer down is put under the trained
ones, and the head now reads the tap below it. It goes on down to ``max_depth`` (all L layers by
default) or until ``depth_patience`` depths in a row failed to beat the best. It serves the
shallowest depth whose best validation score is within ``tolerance`` of the best depth's: the
cheapest head that is as good, within what validation can tell apart. Each depth's frozen part is
computed once and cached, as for a fixed-depth run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.modules import Head, Trunk, top_layers
from multitask_serve.modelrepo.types import Kind
from multitask_serve.training.config import TrainConfig
from multitask_serve.training.data import Split
from multitask_serve.training.features import Encoded, FeatureStore
from multitask_serve.training.loop import FitData, Listener, fit, main_score
from multitask_serve.training.strategies import train_top


@dataclass
class DepthSearch:
    head: Head  # at the chosen depth, best state loaded
    depth: int
    validation: dict[str, float]
    curve: list[dict[str, Any]] = field(default_factory=list)
    trainable_params: int = 0


def choose_depth(curve: list[dict[str, Any]], tolerance: float) -> int:
    """The shallowest depth whose validation score is within ``tolerance`` of the best."""
    best = max(point["score"] for point in curve)
    return min(point["depth"] for point in curve if point["score"] >= best - tolerance)


def search(
    config: TrainConfig,
    encoder: Encoder,
    split: Split[Any],
    kind: Kind,
    encoded: tuple[Encoded, Encoded],
    generator: torch.Generator,
    history: list[dict[str, Any]],
    store: FeatureStore | None = None,
    listener: Listener | None = None,
) -> DepthSearch:
    L = encoder.num_layers
    max_depth = L if config.max_depth is None else max(1, min(config.max_depth, L))
    epochs = config.epochs if config.epochs is not None else 4
    data = FitData(encoder, Trunk(encoder).eval(), *encoded, split, store, listener or Listener())
    head = Head(
        kind, encoder.hidden_size, len(split.labels), top_layers(encoder, 1), config.pooling
    )
    curve: list[dict[str, Any]] = []
    # Best state per depth, kept only while that depth can still be chosen.
    states: dict[int, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}
    best_score = float("-inf")
    stale_depths = 0
    trainable_params = 0
    for depth in range(1, max_depth + 1):
        if depth > 1:
            below = copy.deepcopy(encoder.layers[L - depth])
            head.layers = nn.ModuleList([below, *head.layers])
        train_top(head, depth)
        trainable_params = max(
            trainable_params, sum(p.numel() for p in head.parameters() if p.requires_grad)
        )
        desc = f"{config.task} progressive depth {depth}"
        best = fit(head, data, config, epochs, generator, history, depth, desc)
        head.load_state_dict(best.state)  # the next depth starts from this depth's best
        curve.append(
            {
                "depth": depth,
                "branch_layer": L - depth,
                "score": best.score,
                "best_epoch": best.epoch,
                "epochs": sum(h["trainable_layers"] == depth for h in history),
            }
        )
        states[depth] = (best.state, best.validation)
        if best.score > best_score:
            best_score, stale_depths = best.score, 0
        else:
            stale_depths += 1
        for gone in [
            d for d, (_, v) in states.items() if main_score(v) < best_score - config.tolerance
        ]:
            del states[gone]
        if config.depth_patience is not None and stale_depths >= config.depth_patience:
            break
    chosen = choose_depth(curve, config.tolerance)
    state, validation = states[chosen]
    served = Head(
        kind, encoder.hidden_size, len(split.labels), top_layers(encoder, chosen), config.pooling
    )
    served.load_state_dict(state)
    return DepthSearch(served, chosen, validation, curve, trainable_params)
