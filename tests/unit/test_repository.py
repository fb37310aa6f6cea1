from __future__ import annotations

import os
import time

import pytest

from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError
from multitask_serve.modelrepo.types import TrunkSpec
from tests.unit.test_spec import HEAD


@pytest.fixture
def repo(tmp_path):
    return ModelRepository(tmp_path / "repo")


def test_versions_count_up_and_current_points_at_the_newest(repo):
    assert repo.add_head(HEAD, b"one") == 1
    assert repo.add_head(HEAD, b"two") == 2
    assert repo.versions("sentiment") == [1, 2]
    stored = repo.read_head("sentiment")
    assert stored.version == 2 and stored.model_path.read_bytes() == b"two"
    assert repo.tasks() == ["sentiment"]


def test_rollback_moves_the_pointer_and_removal_deletes_the_task(repo):
    repo.add_head(HEAD, b"one")
    repo.add_head(HEAD, b"two")
    repo.set_current("sentiment", 1)
    assert repo.read_head("sentiment").model_path.read_bytes() == b"one"
    with pytest.raises(RepositoryError):
        repo.set_current("sentiment", 7)
    repo.remove_task("sentiment")
    assert repo.tasks() == [] and repo.current_version("sentiment") is None


def test_a_version_without_a_pointer_is_not_served(repo):
    repo.add_head(HEAD, b"one", make_current=False)
    assert repo.tasks() == []


def test_a_trunk_is_never_replaced_in_place(repo):
    spec = TrunkSpec("m", 2, 8, 16, ("input_ids", "attention_mask"), "f" * 64)
    repo.write_trunk(spec, b"model", b"tok")
    assert repo.read_trunk_spec() == spec
    with pytest.raises(RepositoryError):
        repo.write_trunk(spec, b"model2", b"tok")


def test_sweep_removes_stale_staging_but_not_fresh_ones(repo):
    repo.add_head(HEAD, b"one")
    task_dir = repo.root / "heads" / "sentiment"
    stale, fresh = task_dir / ".staging-old", task_dir / ".staging-new"
    stale.mkdir()
    fresh.mkdir()
    stale_pointer = task_dir / ".current.0123.tmp"  # an interrupted atomic_write
    stale_pointer.write_text("2\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(stale_pointer, (old, old))
    repo.sweep()
    assert not stale.exists() and not stale_pointer.exists() and fresh.exists()
    assert repo.tasks() == ["sentiment"]


def test_missing_trunk_names_the_fix(repo):
    with pytest.raises(RepositoryError, match="mts build"):
        repo.read_trunk_spec()
