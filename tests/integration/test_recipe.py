"""The optimisation recipe: per-layer rates, the warm-up/decay schedule and class weights."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from multitask_serve.export.modules import Head
from multitask_serve.modelrepo.types import Kind
from multitask_serve.training import recipe
from multitask_serve.training.strategies import train_top


def head_with_layers(n: int) -> Head:
    layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(n))
    return Head(Kind.SEQUENCE_CLASSIFICATION, 4, 3, layers)


def test_each_layer_below_the_top_learns_at_the_decay_factor_times_the_one_above():
    head = head_with_layers(3)
    train_top(head, 3)
    groups = recipe.param_groups(head, layer_lr=1e-3, head_lr=1e-2, lr_decay=0.5)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1e-2])
    # the top layer's parameters come first, the classifier's last
    assert groups[0]["params"][0] is head.layers[2].weight
    assert groups[-1]["params"][0] is head.classifier.weight


def test_frozen_layers_are_left_out_of_the_optimizer():
    head = head_with_layers(3)
    train_top(head, 1)
    opt = recipe.optimizer(head, 1e-3, 1e-2, 0.9, 0.0)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in head.parameters() if p.requires_grad}
    assert len(opt.param_groups) == 2


def test_warm_up_rises_linearly_then_decays_linearly_to_zero():
    factors = [recipe.lr_factor(s, 100, 0.1, "linear") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert recipe.lr_factor(50, 100, 0.1, "constant") == 1.0
    assert recipe.lr_factor(0, 100, 0.0, "linear") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        recipe.lr_factor(0, 10, 0.1, "cosine")


def test_the_scheduler_drives_every_group_from_its_own_peak():
    head = head_with_layers(2)
    train_top(head, 2)
    opt = recipe.optimizer(head, 1e-3, 1e-2, 0.5, 0.0)
    sched = recipe.scheduler(opt, total_steps=10, warmup=0.2, schedule="linear")
    peaks = [g["initial_lr"] for g in opt.param_groups]
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([p * 0.5 for p in peaks])
    assert lrs[1] == pytest.approx(peaks)
    assert lrs[9] == pytest.approx([p * 1 / 8 for p in peaks])


def test_class_weights_balance_inverse_frequency_and_skip_unlabelled_pieces():
    assert recipe.class_weights([0, 0, 0, 1], 2) == pytest.approx([4 / 6, 4 / 2])
    tokens = [[0, -100, 0, 1], [0, 2, -100]]
    assert recipe.class_weights(tokens, 4) == pytest.approx([5 / 12, 5 / 4, 5 / 4, 1.0])
    loss = recipe.loss_function([1.0, 3.0])
    assert torch.equal(loss.weight, torch.tensor([1.0, 3.0]))
    assert loss.ignore_index == -100


def test_bf16_autocast_runs_the_forward_pass_in_bfloat16_and_none_leaves_it_fp32():
    layer, x = nn.Linear(4, 4), torch.randn(2, 4)
    with recipe.autocast("bf16"):
        assert layer(x).dtype == torch.bfloat16
    with recipe.autocast("none"):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # the weights themselves stay fp32
    with pytest.raises(ValueError, match="unknown mixed precision 'fp8'"):
        recipe.autocast("fp8")


def test_auto_mixed_precision_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert recipe.resolve_mixed_precision("auto") == "none"
    layer, x = nn.Linear(4, 4), torch.randn(2, 4)
    with recipe.autocast("auto"):
        assert layer(x).dtype == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert recipe.resolve_mixed_precision("auto") == "bf16"
    assert recipe.resolve_mixed_precision("none") == "none"
