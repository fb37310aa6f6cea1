"""The capacity model's placements and hit ratios (support/capacity.py): every task placed
once on the replicas there are, a budget that holds every head never misses, and placing tasks
raises each replica's hit ratio where spreading every task over every replica does not."""

from __future__ import annotations

import numpy as np
import pytest

from support.capacity import (
    DESIGNS,
    Costs,
    Fleet,
    HeadClass,
    balance,
    heads_of,
    place,
    predict,
    zipf_weights,
)

CLASSES = [HeadClass("big", 0.4, 22 << 20, 0.1), HeadClass("small", 0.6, 300 << 10, 0.005)]
COSTS = Costs(hit_ms=10.0, load_ms=40.0, ready_mib=225.0, hit_p99_ms=60.0, cold_load_p95_ms=100.0)


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("replicas", [1, 3, 16])
def test_every_task_is_placed_once_on_exactly_the_replicas_there_are(design, replicas):
    weights = zipf_weights(200, 1.1, seed=0)
    groups = place(design, weights, replicas, seed=0)
    placed = np.concatenate([g.tasks for g in groups])
    assert sorted(placed.tolist()) == list(range(200))
    assert sum(g.replicas for g in groups) == replicas
    assert sum(g.share for g in groups) == pytest.approx(1.0)


def test_a_budget_holding_every_head_never_misses():
    sizes, loads = heads_of(CLASSES, 100, seed=0)
    weights = zipf_weights(100, 1.1, seed=0)
    p = predict("fleet", Fleet(2, 2.0, sizes.sum() / 2**20), COSTS, weights, sizes, loads)
    assert p.hit_ratio == 1.0
    assert p.texts_per_s == pytest.approx(2 * 1000 / COSTS.hit_ms / p.bottleneck_share)


def test_placing_tasks_raises_the_hit_ratio_that_spreading_them_keeps():
    sizes, loads = heads_of(CLASSES, 400, seed=0)
    weights = zipf_weights(400, 1.1, seed=0)
    budget = 0.1 * sizes.sum() / 2**20

    def hit(design: str, replicas: int) -> float:
        fleet = Fleet(replicas, 2.0, budget)
        return predict(design, fleet, COSTS, weights, sizes, loads, requests=20_000).hit_ratio

    one = hit("spread", 1)
    assert hit("spread", 4) == pytest.approx(one, abs=0.02)
    assert hit("fleet", 4) > one + 0.05
    assert hit("shards", 4) > one + 0.05
    assert hit("modelmesh", 4) < hit("fleet", 4)  # plain LRU against GreedyDual-Size


@pytest.mark.parametrize("replicas", [2, 5, 16])
def test_balancing_gives_every_replica_an_equal_part_and_keeps_each_tasks_traffic(replicas):
    weights = zipf_weights(300, 1.1, seed=0)
    placed = place("fleet", weights, replicas, seed=0)
    assert max(g.share / g.replicas for g in placed) > 1.05 / replicas  # placement is uneven
    groups = balance(placed, weights, replicas)
    assert len(groups) == replicas
    assert [g.share for g in groups] == pytest.approx([1 / replicas] * replicas)
    served = np.zeros(len(weights))
    for g in groups:
        served[g.tasks] += g.weights
    assert served == pytest.approx(weights)
