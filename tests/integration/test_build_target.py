"""Building a repository into a fresh volume: an empty directory that already exists.

A volume's mount point always exists and its parent may be read-only, so the build stages inside
the target and publishes by renames, the trunk last; a re-run on a complete repository changes
nothing, and an interrupted build is never served and is cleared by the next one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multitask_serve.cli import main as mts
from multitask_serve.export import build as export_build
from multitask_serve.export.build import build_repository
from multitask_serve.modelrepo.builds import LOCK_FILE, VOLUME_ENTRIES, read_stamp
from multitask_serve.modelrepo.pending import PENDING_FILE, read_pending
from multitask_serve.modelrepo.repository import ModelRepository

ZERO_SHOT = {"topic-zs": {"sport": "sport match goal", "business": "business market bank"}}
# What a build leaves in its target: the repository, and the lock the next build takes.
PUBLISHED = [LOCK_FILE, "heads", "trunk"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_a_build_into_a_fresh_volume_publishes_a_complete_repository_beside_lost_found(
    tmp_path, tiny_encoder
):
    volume = tmp_path / "models"
    # What a fresh volume may hold: lost+found (ext4), .snapshot (an NFS filer's export).
    (volume / "lost+found").mkdir(parents=True, mode=0o700)
    (volume / "lost+found" / "#1234").write_text("what fsck found")
    (volume / ".snapshot" / "hourly.0").mkdir(parents=True)
    before_parent = sorted(p.name for p in tmp_path.iterdir())
    build_repository(volume, tiny_encoder, ZERO_SHOT, report=lambda _: None)
    repo = ModelRepository(volume)
    assert repo.has_trunk()
    # No staging left; the volume's own entries left as they were.
    assert sorted(p.name for p in volume.iterdir()) == sorted([*PUBLISHED, *VOLUME_ENTRIES])
    assert (volume / "lost+found" / "#1234").read_text() == "what fsck found"
    assert (volume / ".snapshot" / "hourly.0").is_dir()
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
    assert sorted(p.name for p in volume.iterdir()) == PUBLISHED


def test_a_directory_holding_other_files_is_refused_and_left_alone(tmp_path, tiny_encoder):
    target = tmp_path / "mine"
    (target / "lost+found").mkdir(parents=True)
    (target / "notes.txt").write_text("not a repository")
    with pytest.raises(FileExistsError, match=r"is not empty \(notes\.txt\)"):
        build_repository(target, tiny_encoder, ZERO_SHOT, report=lambda _: None)
    assert sorted(os.listdir(target)) == ["lost+found", "notes.txt"]  # not even a lock file


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


def test_two_builds_into_one_volume_at_once_take_turns_and_both_succeed(tmp_path, tiny_encoder_dir):
    # Two build Jobs on one claim (a release while the first runs): real processes, as Jobs are.
    volume = tmp_path / "models"
    volume.mkdir()
    argv = [sys.executable, "-m", "multitask_serve", "build", "--repo", str(volume)]
    argv += ["--if-missing", "--no-train", "--encoder", str(tiny_encoder_dir)]
    runs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    # One built; the other waited for its lock, then found the repository complete.
    assert sum(f"another build holds {LOCK_FILE}; waiting" in out for out in outputs) == 1
    assert sum("holds a complete repository; not rebuilding" in out for out in outputs) == 1
    repo = ModelRepository(volume)
    assert repo.tasks() == ["embed", "sentiment-zs", "topic-zs"]
    assert sorted(p.name for p in volume.iterdir()) == sorted([*PUBLISHED, "build.json"])


def _uploaded(root: Path, task: str, like: str) -> int:
    """A head someone added through the admin API (a copy of a built one, marked as theirs)."""
    repo = ModelRepository(root)
    stored = repo.read_head(like)
    spec = dataclasses.replace(stored.spec, task=task, training={"uploaded": "by a user"})
    return repo.add_head(spec, stored.model_path.read_bytes())


def test_a_newer_build_reaches_the_volume_as_new_versions_keeping_every_other_head(
    tmp_path, tiny_encoder_dir, monkeypatch, capsys
):
    volume = tmp_path / "models"
    argv = ["build", "--repo", str(volume), "--if-outdated", "--no-train"]
    argv += ["--encoder", str(tiny_encoder_dir)]
    assert mts(argv) == 0
    repo = ModelRepository(volume)
    trunk = snapshot(volume / "trunk")
    assert read_stamp(volume).heads == {"embed": 1, "sentiment-zs": 1, "topic-zs": 1}
    assert _uploaded(volume, "custom", like="topic-zs") == 1  # a task of someone's
    assert _uploaded(volume, "sentiment-zs", like="sentiment-zs") == 2  # served over the build's
    # The next release describes the zero-shot labels differently: another recipe.
    for task, labels in export_build.DEFAULT_ZERO_SHOT.items():
        changed = {label: f"{text}, and more" for label, text in labels.items()}
        monkeypatch.setitem(export_build.DEFAULT_ZERO_SHOT, task, changed)
    capsys.readouterr()
    assert mts(argv) == 0
    out = capsys.readouterr().out
    assert snapshot(volume / "trunk") == trunk  # the same trunk: left as it is
    assert (repo.versions("topic-zs"), repo.current_version("topic-zs")) == ([1, 2], 2)
    assert "and more" in repo.read_head("topic-zs").spec.training["label_descriptions"]["sport"]
    assert (repo.versions("embed"), repo.current_version("embed")) == ([1], 1)
    # Someone's version stays served; the build's is stored beside it, and they are told.
    assert (repo.versions("sentiment-zs"), repo.current_version("sentiment-zs")) == ([1, 2, 3], 2)
    assert "head sentiment-zs: stored version 3; version 2 stays current" in out
    assert (repo.versions("custom"), repo.current_version("custom")) == ([1], 1)
    stamp = read_stamp(volume)
    assert stamp.heads == {"embed": 1, "sentiment-zs": 3, "topic-zs": 2} and not stamp.orphaned
    # The same build again changes nothing.
    before = snapshot(volume)
    assert mts(argv) == 0
    assert "holds this build already" in capsys.readouterr().out
    assert snapshot(volume) == before


def test_a_new_trunk_replaces_the_old_unless_it_would_orphan_someones_heads(
    tmp_path, built_repo, tiny_encoder_dir, other_encoder_dir, monkeypatch, capsys
):
    # A repository of a build before stamps (the tiny encoder's trunk, embed and topic-zs), and
    # builds of those two heads only (fewer exports).
    monkeypatch.setattr(export_build, "DEFAULT_ZERO_SHOT", ZERO_SHOT)
    volume = Path(shutil.copytree(built_repo, tmp_path / "models"))
    repo = ModelRepository(volume)
    old = repo.read_trunk_spec().fingerprint
    argv = ["build", "--repo", str(volume), "--if-outdated", "--no-train", "--encoder"]
    # Another encoder: only the build's own heads are bound to the trunk, so it is replaced.
    assert mts([*argv, str(other_encoder_dir)]) == 0
    assert f"trunk replaced: {old[:12]} -> " in capsys.readouterr().out
    new = repo.read_trunk_spec().fingerprint
    assert new != old and read_stamp(volume).trunk_fingerprint == new
    for task in ("embed", "topic-zs"):
        assert repo.read_head(task).spec.trunk_fingerprint == new
    # Someone adds a head; back to the first encoder would orphan it: refused, nothing changed.
    _uploaded(volume, "custom", like="topic-zs")
    before = snapshot(volume)
    with pytest.raises(SystemExit, match=r"would stop being served: custom\. Nothing was changed"):
        mts([*argv, str(tiny_encoder_dir)])
    assert snapshot(volume) == before
    # Asked to, it replaces the trunk anyway; custom stays stored, reported, and in build.json.
    assert mts([*argv, str(tiny_encoder_dir), "--replace-trunk"]) == 0
    out = capsys.readouterr().out
    assert repo.read_trunk_spec().fingerprint == old  # the export is deterministic
    assert f"orphaned custom: its served version is bound to trunk {new[:12]}, not" in out
    stamp = read_stamp(volume)
    assert (stamp.trunk_fingerprint, stamp.orphaned) == (old, ("custom",))
    assert repo.read_head("custom").spec.trunk_fingerprint == new  # stored, not dropped
