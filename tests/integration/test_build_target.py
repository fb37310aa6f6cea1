"""Building a repository into a fresh volume: an empty directory that already exists.

A volume's mount point always exists and its parent may be read-only, so the build stages inside
the target and publishes by renames, the trunk last; a re-run on a complete repository changes
nothing, and an interrupted build is never served and is cleared by the next one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from multitask_serve.cli import main as mts
from multitask_serve.export.build import build_repository
from multitask_serve.modelrepo.pending import PENDING_FILE, read_pending
from multitask_serve.modelrepo.repository import ModelRepository

ZERO_SHOT = {"topic-zs": {"sport": "sport match goal", "business": "business market bank"}}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_a_build_into_an_existing_empty_directory_publishes_a_complete_repository(
    tmp_path, tiny_encoder
):
    volume = tmp_path / "models"
    volume.mkdir()
    before_parent = sorted(p.name for p in tmp_path.iterdir())
    build_repository(volume, tiny_encoder, ZERO_SHOT, report=lambda _: None)
    repo = ModelRepository(volume)
    assert repo.has_trunk()
    assert sorted(p.name for p in volume.iterdir()) == ["heads", "trunk"]  # no staging left
    assert sorted(repo.tasks()) == ["embed", "topic-zs"]
    # Nothing was written beside the volume: its parent may be a read-only root filesystem.
    assert sorted(p.name for p in tmp_path.iterdir()) == before_parent


def test_build_if_missing_on_a_complete_repository_changes_nothing(
    tmp_path, tiny_encoder_dir, capsys
):
    volume = tmp_path / "models"
    volume.mkdir()
    argv = ["build", "--repo", str(volume), "--if-missing", "--no-train"]
    assert mts([*argv, "--encoder", str(tiny_encoder_dir)]) == 0
    assert read_pending(volume) is None  # --no-train: nothing is left to train later
    built = snapshot(volume)
    assert mts([*argv, "--encoder", str(tiny_encoder_dir)]) == 0
    assert "holds a complete repository; not rebuilding" in capsys.readouterr().out
    assert snapshot(volume) == built
    # Without --if-missing a complete repository is refused, not rebuilt over.
    with pytest.raises(SystemExit, match="already holds a repository"):
        mts(["build", "--repo", str(volume), "--no-train", "--encoder", str(tiny_encoder_dir)])
    assert snapshot(volume) == built


def test_an_interrupted_build_publishes_no_trunk_and_the_next_build_clears_it(
    tmp_path, tiny_encoder
):
    volume = tmp_path / "models"
    volume.mkdir()

    def crash_after_the_first_head(line: str) -> None:
        if line.startswith("[3/"):
            raise KeyboardInterrupt  # stands in for a kill mid-build

    with pytest.raises(KeyboardInterrupt):
        build_repository(volume, tiny_encoder, ZERO_SHOT, report=crash_after_the_first_head)
    assert not ModelRepository(volume).has_trunk()  # nothing a server or init container accepts
    # A kill -9 leaves its staging directory and any published heads behind: so does this.
    (volume / ".building-deadbeef" / "trunk").mkdir(parents=True)
    (volume / "heads" / "embed").mkdir(parents=True)
    (volume / PENDING_FILE).write_text("{}")  # a --train-later build's plan, published early
    build_repository(volume, tiny_encoder, ZERO_SHOT, report=lambda _: None)
    assert ModelRepository(volume).has_trunk()
    assert sorted(p.name for p in volume.iterdir()) == ["heads", "trunk"]


def test_a_directory_holding_other_files_is_refused_and_left_alone(tmp_path, tiny_encoder):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("not a repository")
    with pytest.raises(FileExistsError, match="is not empty"):
        build_repository(target, tiny_encoder, ZERO_SHOT, report=lambda _: None)
    assert os.listdir(target) == ["notes.txt"]


def test_train_later_publishes_at_once_and_lists_the_default_heads_as_pending(
    tmp_path, tiny_encoder_dir, capsys
):
    from multitask_serve.training.build import DEFAULT_HEADS

    volume = tmp_path / "models"
    argv = ["build", "--repo", str(volume), "--train-later", "--encoder", str(tiny_encoder_dir)]
    assert mts(argv) == 0
    assert "pending training: sentiment, topic, ner" in capsys.readouterr().out
    repo = ModelRepository(volume)
    assert repo.has_trunk() and repo.tasks() == ["embed", "sentiment-zs", "topic-zs"]
    pending = read_pending(volume)
    assert pending is not None
    # Each head with the config `mts build` trains it with, from the encoder the trunk came from.
    assert [h.config for h in pending.heads] == [dataclasses.asdict(c) for c in DEFAULT_HEADS]
    assert pending.tasks == ["sentiment", "topic", "ner"]
    assert pending.encoder == str(tiny_encoder_dir.resolve())
    with pytest.raises(SystemExit, match="exclude each other"):
        mts(["build", "--repo", str(tmp_path / "other"), "--train-later", "--no-train"])
