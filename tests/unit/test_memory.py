"""The memory budget's arithmetic and where a replica's limit comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from multitask_serve.service.memory import (
    CONCURRENT_RUNS,
    MIB,
    RUN_FIXED_BYTES,
    TARGET_SHARE,
    ActivationModel,
    MemoryBudget,
    cgroup_limit_mb,
    resident_bytes,
)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"memory.max": "2147483648\n"}, 2048.0),  # cgroup v2, a container's limit
        ({"memory.max": "max\n"}, None),  # v2, no limit
        ({"memory/memory.limit_in_bytes": "1073741824\n"}, 1024.0),  # v1
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # v1, no limit
        ({"memory.max": "garbage"}, None),
        ({}, None),  # no cgroup file system
    ],
)
def test_the_limit_is_the_cgroups(tmp_path: Path, files: dict[str, str], expected: float | None):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_limit_mb(tmp_path) == expected


def test_resident_memory_is_read_from_proc():
    assert resident_bytes() > 10 * MIB


def test_activations_grow_with_rows_length_and_width():
    small, wide = ActivationModel(384), ActivationModel(768)
    assert small.run_bytes(2, 128) - RUN_FIXED_BYTES == 2 * (
        small.run_bytes(1, 128) - RUN_FIXED_BYTES
    )
    assert small.run_bytes(1, 256) - RUN_FIXED_BYTES > 2 * (
        small.run_bytes(1, 128) - RUN_FIXED_BYTES
    )
    assert wide.run_bytes(1, 128) > small.run_bytes(1, 128)
    # The measured worst batch (bench/results/memory-model.json): 32 x 256 tokens of MiniLM-L6,
    # 433-505 MiB over the resident memory; the model stays above it.
    assert 505 * MIB < small.run_bytes(32, 256) < 700 * MIB


def test_no_limit_is_no_bound():
    budget = MemoryBudget(None, ActivationModel(384))
    assert budget.limit_mb is None
    assert budget.rows_per_run(256, budget.room()) >= 1 << 20


def test_the_budget_reads_the_room_left_by_what_is_resident():
    model = ActivationModel(384)
    resident = [300 * MIB]  # a fresh replica of the default build: ~280-300 MiB
    budget = MemoryBudget(2048, model, resident=lambda: resident[0])
    room = budget.room()
    assert room == int((TARGET_SHARE * 2048 * MIB - 300 * MIB) / CONCURRENT_RUNS)
    # A batch of 32 texts of 256 tokens fits a fresh 2 GiB replica in one run...
    assert budget.rows_per_run(256, room) >= 32
    # ...and in several, smaller ones as what is resident grows; none once it is all taken.
    resident[0] = 1400 * MIB
    assert 0 < budget.rows_per_run(256, budget.room()) < 32
    resident[0] = 1700 * MIB
    assert budget.room() == 0 and budget.rows_per_run(256, 0) == 0
    assert model.run_bytes(1, 1) > RUN_FIXED_BYTES
