"""The model repository on disk: one trunk, and for each task its head versions and a pointer.

Layout (file names are the constants below)::

    <root>/trunk/model.onnx, tokenizer.json, trunk.json
    <root>/trunk/model.<precision>.onnx                     optional variants (e.g. int8)
    <root>/heads/<task>/<version>/head.onnx, head.json      versions are 1, 2, 3, ...
    <root>/heads/<task>/current                             the served version, replaced by rename
    <root>/heads/<task>/shadow                              a candidate version run on live
                                                            traffic but not served (optional)

Every write stages a complete directory beside its target and renames it into place, so the
repository is always in the old state or the new one. Hidden names (``.staging-*``) are ignored by
readers and swept by ``sweep()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from multitask_serve.modelrepo.atomic import atomic_write, discard_dir, fsync_dir, staged_dir
from multitask_serve.modelrepo.types import (
    PRECISION_RE,
    REFERENCE_PRECISION,
    HeadSpec,
    SpecError,
    TrunkSpec,
    TrunkVariant,
    validate_task_name,
)

log = logging.getLogger(__name__)

TRUNK_DIR = "trunk"
HEADS_DIR = "heads"
TRASH_DIR = ".trash"
TRUNK_MODEL = "model.onnx"
TRUNK_TOKENIZER = "tokenizer.json"
TRUNK_SPEC = "trunk.json"
HEAD_MODEL = "head.onnx"
HEAD_SPEC = "head.json"
CURRENT = "current"
SHADOW = "shadow"
PINNED = "pinned"
# A task folder changed this recently is read again at the next scan (``changed_since``).
RACY_SECONDS = 2


class RepositoryError(RuntimeError):
    """The repository is missing or inconsistent."""


@dataclass(frozen=True)
class StoredHead:
    spec: HeadSpec
    version: int
    model_path: Path


class ModelRepository:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- trunk -----------------------------------------------------------------------------
    @property
    def trunk_dir(self) -> Path:
        return self.root / TRUNK_DIR

    @property
    def trunk_model_path(self) -> Path:
        return self.trunk_dir / TRUNK_MODEL

    @property
    def tokenizer_path(self) -> Path:
        return self.trunk_dir / TRUNK_TOKENIZER

    def has_trunk(self) -> bool:
        return (self.trunk_dir / TRUNK_SPEC).is_file()

    def read_trunk_spec(self) -> TrunkSpec:
        path = self.trunk_dir / TRUNK_SPEC
        if not path.is_file():
            raise RepositoryError(f"no trunk in {self.root} (missing {path}); run `mts build`")
        return TrunkSpec.from_json(path.read_bytes())

    def write_trunk(self, spec: TrunkSpec, model: bytes, tokenizer: bytes) -> None:
        """Install a trunk. Replacing a trunk orphans every head, so it must not exist yet."""
        if self.trunk_dir.exists():
            raise RepositoryError(f"{self.trunk_dir} exists; a trunk is never replaced in place")
        staged = staged_dir(
            self.root,
            {TRUNK_MODEL: model, TRUNK_TOKENIZER: tokenizer, TRUNK_SPEC: spec.to_json().encode()},
        )
        os.rename(staged, self.trunk_dir)
        fsync_dir(self.root)

    def trunk_variant_path(self, precision: str) -> Path:
        """The graph served for ``precision``: model.onnx for the reference, else a variant's."""
        if precision == REFERENCE_PRECISION:
            return self.trunk_model_path
        spec = self.read_trunk_spec()
        if precision not in spec.variants:
            raise RepositoryError(
                f"{self.trunk_dir} has no {precision} trunk (has {', '.join(spec.precisions)}); "
                f"`mts quantize --repo {self.root}` makes an int8 one"
            )
        return self.trunk_dir / spec.variants[precision].file

    def add_trunk_variant(
        self, precision: str, variant: TrunkVariant, model: bytes, replace: bool = False
    ) -> TrunkSpec:
        """Store another graph of the trunk and record it in trunk.json (``replace``: in place of
        the variant of that precision, which must then be stored under another file name).

        The reference graph and its fingerprint do not change, so served heads stay valid. The
        graph is written before trunk.json names it: a crash in between leaves an unnamed file
        that nothing reads (and, when replacing, the old variant still whole and named). The
        replaced graph's file is removed last.
        """
        if not PRECISION_RE.match(precision) or precision == REFERENCE_PRECISION:
            raise RepositoryError(f"invalid trunk variant name {precision!r}")
        spec = self.read_trunk_spec()
        old = spec.variants.get(precision)
        if old is not None and not replace:
            raise RepositoryError(f"{self.trunk_dir} already has an {precision!r} trunk variant")
        if old is not None and old.file == variant.file:
            raise RepositoryError(
                f"a replacing {precision} variant needs a file other than {old.file}"
            )
        atomic_write(self.trunk_dir / variant.file, model)
        updated = dataclasses.replace(spec, variants={**spec.variants, precision: variant})
        atomic_write(self.trunk_dir / TRUNK_SPEC, updated.to_json().encode())
        if old is not None:
            (self.trunk_dir / old.file).unlink(missing_ok=True)
        return updated

    # -- heads -----------------------------------------------------------------------------
    def _task_dir(self, task: str) -> Path:
        return self.root / HEADS_DIR / validate_task_name(task)

    def tasks(self) -> list[str]:
        """Tasks that have a current version, sorted."""
        heads = self.root / HEADS_DIR
        if not heads.is_dir():
            return []
        return sorted(
            p.name
            for p in heads.iterdir()
            if not p.name.startswith(".") and (p / CURRENT).is_file()
        )

    def changed_since(self, seen: Mapping[str, int]) -> tuple[dict[str, int], set[str]]:
        """Which task folders changed since a scan that saw ``seen`` (folder -> signature): one
        directory listing and one stat per folder, no file read. Every change to a task (a
        version added, a pointer moved, a pin, the folder removed) renames or removes an entry
        of its folder, which moves the folder's mtime. Returns this scan's signatures and the
        folders that are new, changed or gone. A folder changed within ``RACY_SECONDS`` of the
        scan reads as changed again next time (its mtime may not move for a second change
        within the file system's clock tick), as git treats racily clean files."""
        heads = self.root / HEADS_DIR
        now = time.time_ns()
        signatures: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(heads) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                    # racy: a signature no later scan can match, so it is read again
                    racy = now - mtime < RACY_SECONDS * 1_000_000_000
                    signatures[entry.name] = -1 if racy else mtime
        changed = {t for t, sig in signatures.items() if sig == -1 or seen.get(t) != sig}
        changed |= set(seen) - set(signatures)
        return signatures, changed

    def versions(self, task: str) -> list[int]:
        task_dir = self._task_dir(task)
        if not task_dir.is_dir():
            return []
        return sorted(int(p.name) for p in task_dir.iterdir() if p.name.isdigit() and p.is_dir())

    def current_version(self, task: str) -> int | None:
        return self._pointer(task, CURRENT)

    def _pointer(self, task: str, name: str) -> int | None:
        pointer = self._task_dir(task) / name
        try:
            text = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise RepositoryError(f"{pointer} holds {text!r}, not a version number")
        return int(text)

    def read_head(self, task: str, version: int | None = None) -> StoredHead:
        if version is None:
            version = self.current_version(task)
            if version is None:
                raise RepositoryError(f"task {task!r} has no current version")
        vdir = self._task_dir(task) / str(version)
        try:
            spec = HeadSpec.from_json((vdir / HEAD_SPEC).read_bytes())
        except FileNotFoundError:
            raise RepositoryError(f"{vdir} has no {HEAD_SPEC}") from None
        except SpecError as exc:
            raise RepositoryError(f"{vdir}: {exc}") from exc
        return StoredHead(spec=spec, version=version, model_path=vdir / HEAD_MODEL)

    def add_head(self, spec: HeadSpec, model: bytes, *, make_current: bool = True) -> int:
        """Store a new version of ``spec.task`` and (by default) point ``current`` at it."""
        task_dir = self._task_dir(spec.task)
        task_dir.mkdir(parents=True, exist_ok=True)
        staged = staged_dir(task_dir, {HEAD_MODEL: model, HEAD_SPEC: spec.to_json().encode()})
        try:
            version = max(self.versions(spec.task), default=0) + 1
            while True:
                target = task_dir / str(version)
                try:
                    # rename(2) refuses a non-empty target: a concurrent writer that took this
                    # number first makes us try the next one.
                    os.rename(staged, target)
                    break
                except OSError:
                    if not target.exists():
                        raise
                    version += 1
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        fsync_dir(task_dir)
        if make_current:
            self.set_current(spec.task, version)
        return version

    def set_current(self, task: str, version: int) -> None:
        """Serve ``version`` (one rename). A shadow pointer naming it goes too (one unlink): the
        version is served now, and no later move of ``current`` may make it a candidate again."""
        self._point(task, CURRENT, version)
        if self._pointer(task, SHADOW) == version:
            self.clear_shadow(task)

    def _point(self, task: str, name: str, version: int) -> None:
        """Replace pointer ``name`` (one rename) with a stored version's number."""
        task_dir = self._task_dir(task)
        if not (task_dir / str(version) / HEAD_SPEC).is_file():
            raise RepositoryError(f"task {task!r} has no version {version}")
        atomic_write(task_dir / name, f"{version}\n".encode())

    # -- shadow: a candidate version that reads live traffic and answers nobody ---------------
    def shadow_version(self, task: str) -> int | None:
        """The candidate version, or None. A pointer equal to ``current`` is none: a promotion
        that a crash interrupted between its two steps (``promote_shadow``)."""
        shadow = self._pointer(task, SHADOW)
        if shadow is None or shadow == self.current_version(task):
            return None
        return shadow

    def set_shadow(self, task: str, version: int) -> None:
        self._point(task, SHADOW, version)

    def clear_shadow(self, task: str) -> None:
        """Forget the candidate (one unlink). Its version stays stored, as a replaced one does,
        so that no later version reuses its number."""
        task_dir = self._task_dir(task)
        if not task_dir.is_dir():  # the task was removed: no pointer left to clear
            return
        (task_dir / SHADOW).unlink(missing_ok=True)
        fsync_dir(task_dir)

    def promote_shadow(self, task: str) -> int:
        """Serve the candidate: ``current`` moves to it (one rename), then its pointer goes
        (``set_current``).

        A crash between the two leaves both pointers naming the candidate, which reads as
        promoted with no shadow (``shadow_version``); either way the state is the old or the new.
        """
        version = self.shadow_version(task)
        if version is None:
            raise RepositoryError(f"task {task!r} has no shadow version")
        self.set_current(task, version)
        return version

    # -- pins: heads every replica keeps loaded, whatever MTS_HEAD_MEMORY_MB evicts ------------
    def pinned(self, tasks: Iterable[str] | None = None) -> set[str]:
        """The tasks (of ``tasks``; None: of all) pinned through the admin API: a ``pinned``
        file in the task's folder."""
        heads = self.root / HEADS_DIR
        if not heads.is_dir():
            return set()
        folders = heads.iterdir() if tasks is None else (heads / t for t in tasks)
        return {p.name for p in folders if (p / PINNED).is_file()}

    def set_pinned(self, task: str, pinned: bool) -> None:
        task_dir = self._task_dir(task)
        if not task_dir.is_dir():
            raise RepositoryError(f"task {task!r} does not exist")
        if pinned:
            atomic_write(task_dir / PINNED, b"")
        else:
            (task_dir / PINNED).unlink(missing_ok=True)
            fsync_dir(task_dir)

    def remove_task(self, task: str) -> None:
        task_dir = self._task_dir(task)
        if not task_dir.is_dir():
            raise RepositoryError(f"task {task!r} does not exist")
        discard_dir(task_dir, self.root / TRASH_DIR)

    def sweep(self, older_than_s: float = 600.0) -> None:
        """Delete leftovers of writes that a crash interrupted.

        Only leftovers older than ``older_than_s`` go: another process sharing the repository may
        be staging a write right now. A repository this process cannot write (a read-only mount,
        as KServe mounts a ``pvc://`` storage URI) is left as it is: its leftovers are hidden
        names that readers ignore, and a writer's sweep removes them.
        """
        # access(2) answers EROFS on a read-only mount, whoever asks (root included).
        if not os.access(self.root, os.W_OK):
            log.info("%s is read-only here: leftovers of interrupted writes stay", self.root)
            return
        cutoff = time.time() - older_than_s
        heads = self.root / HEADS_DIR
        candidates = [
            self.root,
            self.root / TRASH_DIR,
            *(heads.iterdir() if heads.is_dir() else []),
        ]
        for parent in candidates:
            if not parent.is_dir():
                continue
            # Staged directories, and the temporary files of atomic_write (a pointer's update).
            patterns = ["*"] if parent.name == TRASH_DIR else [".staging-*", ".*.tmp"]
            for p in (p for pattern in patterns for p in parent.glob(pattern)):
                if p.lstat().st_mtime >= cutoff:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    try:
                        p.unlink(missing_ok=True)
                    except OSError as exc:  # a folder this process may not write
                        log.warning("cannot remove %s: %s", p, exc)
