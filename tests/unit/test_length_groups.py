"""Cutting a micro-batch into length groups: least padded tokens + per-run cost."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from multitask_serve.service.engine import length_groups


def cost(lengths: np.ndarray, groups: list[list[int]], call_cost: int) -> int:
    return sum(len(g) * int(lengths[g].max()) + call_cost for g in groups)


def brute_force(lengths: np.ndarray, call_cost: int) -> int:
    """Least cost over every way to cut the length-sorted rows into contiguous groups."""
    order = np.argsort(lengths, kind="stable")
    n, best = len(order), None
    for cuts in itertools.product([False, True], repeat=n - 1):
        groups, start = [], 0
        for i, cut in enumerate(cuts, 1):
            if cut:
                groups.append(order[start:i].tolist())
                start = i
        groups.append(order[start:].tolist())
        c = cost(lengths, groups, call_cost)
        best = c if best is None else min(best, c)
    assert best is not None
    return best


def test_similar_lengths_stay_one_group_in_their_own_order():
    assert length_groups(np.array([12, 11, 12, 10]), call_cost=32) == [[0, 1, 2, 3]]


def test_one_long_text_runs_apart_from_short_ones():
    groups = length_groups(np.array([6, 120, 5, 7, 6]), call_cost=32)
    assert groups == [[0, 2, 3, 4], [1]]


def test_one_group_worth_its_padding_keeps_the_rows_in_request_order():
    # Padding (34 tokens) costs more than a run, yet no cut pays: one group, and it must list
    # the rows as the batch holds them, not sorted by length.
    assert length_groups(np.array([2, 2, 2, 3, 2, 9]), call_cost=32) == [[0, 1, 2, 3, 4, 5]]


def test_a_huge_run_cost_never_splits():
    assert length_groups(np.array([3, 128, 4, 90]), call_cost=1 << 20) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("seed", range(20))
def test_the_cut_is_the_cheapest_and_covers_every_row_once(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 128, size=int(rng.integers(2, 11)))
    call_cost = int(rng.choice([0, 8, 32, 200]))
    groups = length_groups(lengths, call_cost)
    assert sorted(row for g in groups for row in g) == list(range(len(lengths)))
    assert all(g == sorted(g) for g in groups)
    assert cost(lengths, groups, call_cost) == brute_force(lengths, call_cost)
