"""Publishing a staged build: into an empty volume, or as an update of a complete repository.

A fresh build moves its heads into place and its trunk last (``trunk/trunk.json`` marks a
complete repository). An update (``mts build --if-outdated``, a newer build reaching a volume
that holds an older one) adds to what serving replicas read rather than rewriting it: each
staged head becomes a new version of its task (one rename, as the admin API stores one), so
every acknowledged head and every older version stays. The trunk stays too when the new build
exported the same one (the same fingerprint, as the same encoder and exporter give). A new trunk
orphans every head bound to the old one, so it replaces the old trunk only when no head but the
previous build's own would be orphaned, or when asked (``replace_trunk``); the orphaned heads
stay stored and are named in the build's output and in ``build.json`` (``orphaned``), never
dropped in silence.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from multitask_serve.modelrepo.atomic import fsync_dir
from multitask_serve.modelrepo.builds import Stamp, TrunkChanged, read_stamp, write_stamp
from multitask_serve.modelrepo.repository import (
    TRASH_DIR,
    TRUNK_DIR,
    ModelRepository,
    RepositoryError,
)
from multitask_serve.modelrepo.types import TrunkSpec

Report = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """How a build publishes. ``identity``: stamped into build.json (None: no stamp);
    ``update``: a complete repository is updated rather than refused; ``replace_trunk``: a new
    trunk replaces the old one even though it orphans heads (which are reported)."""

    identity: dict[str, str] | None = None
    update: bool = False
    replace_trunk: bool = False


class StagedRepository(ModelRepository):
    """The staging repository a build fills; ``check_trunk`` sees the trunk before it is written,
    so that an update that cannot publish stops before minutes of training."""

    def __init__(self, root: Path, check_trunk: Callable[[TrunkSpec], None] | None) -> None:
        super().__init__(root)
        self._check_trunk = check_trunk

    def write_trunk(self, spec: TrunkSpec, model: bytes, tokenizer: bytes) -> None:
        if self._check_trunk is not None:
            self._check_trunk(spec)
        super().write_trunk(spec, model, tokenizer)


def publish_fresh(staging: Path, root: Path, identity: dict[str, str] | None) -> None:
    """Everything staged into ``root`` by renames, heads first, the trunk last."""
    staged = ModelRepository(staging)
    if identity is not None:
        heads = {t: v for t in staged.tasks() if (v := staged.current_version(t)) is not None}
        write_stamp(staging, Stamp(identity, staged.read_trunk_spec().fingerprint, heads))
    for name in sorted(p.name for p in staging.iterdir() if p.name != TRUNK_DIR):
        os.rename(staging / name, root / name)
    fsync_dir(root)
    os.rename(staging / TRUNK_DIR, root / TRUNK_DIR)  # last: the repository is complete
    fsync_dir(root)


class Update:
    """Publishing a staged build into the complete repository at ``root`` (see the module)."""

    def __init__(
        self, root: Path, tasks: Sequence[str], replace_trunk: bool, report: Report
    ) -> None:
        self.repo = ModelRepository(root)
        self.tasks = list(tasks)  # the heads this build makes
        self.replace_trunk = replace_trunk
        self.report = report
        self.previous = read_stamp(root)
        self.old = self.repo.read_trunk_spec()

    def builds_version(self, task: str) -> int | None:
        """The version of ``task`` the previous build published (a build before stamps published
        version 1 of each of its heads)."""
        if self.previous is None:
            return 1 if 1 in self.repo.versions(task) else None
        return self.previous.heads.get(task)

    def is_builds(self, task: str) -> bool:
        """Whether ``task``'s served version is the one the previous build published."""
        current = self.repo.current_version(task)
        return current is not None and current == self.builds_version(task)

    def bound_to_old(self) -> list[str]:
        """Tasks served from a head bound to the old trunk that this build does not replace."""
        found = []
        for task in self.repo.tasks():
            if task in self.tasks and self.is_builds(task):
                continue
            if self._bound(task) == self.old.fingerprint:
                found.append(task)
        return found

    def _bound(self, task: str) -> str:
        """The trunk fingerprint ``task``'s served version is bound to ("" if unreadable)."""
        try:
            return self.repo.read_head(task).spec.trunk_fingerprint
        except RepositoryError:
            return ""

    def check_trunk(self, new: TrunkSpec) -> None:
        if new.fingerprint == self.old.fingerprint:
            return
        bound = self.bound_to_old()
        if bound and not self.replace_trunk:
            raise TrunkChanged(
                f"this build's trunk ({new.base_model}, {new.fingerprint[:12]}) is not the "
                f"repository's ({self.old.base_model}, {self.old.fingerprint[:12]}); heads bound "
                f"to the old trunk would stop being served: {', '.join(bound)}. Nothing "
                "was changed. Retrain them against the new trunk, or build a new volume, or pass "
                "--replace-trunk to replace it anyway (they stay stored, listed in build.json)"
            )

    def publish(self, staging: Path, identity: dict[str, str] | None) -> None:
        staged = ModelRepository(staging)
        new = staged.read_trunk_spec()
        swap = new.fingerprint != self.old.fingerprint
        published = {}
        for task in staged.tasks():
            published[task] = self._head(staged, task, swap)
        if swap:
            self._swap_trunk(staging)
        # Every head left bound to another trunk: those this swap orphaned, and any before.
        orphaned = {t: fp for t in self.repo.tasks() if (fp := self._bound(t)) != new.fingerprint}
        for task, fingerprint in orphaned.items():
            self.report(
                f"orphaned {task}: its served version is bound to trunk {fingerprint[:12]}, not "
                f"the repository's {new.fingerprint[:12]}; stored, not served; retrain or upload "
                "it again"
            )
        if identity is not None:
            stamp = Stamp(identity, new.fingerprint, published, tuple(orphaned))
            write_stamp(self.repo.root, stamp)

    def _head(self, staged: ModelRepository, task: str, swap: bool) -> int:
        """Store the staged head as a new version of ``task``, made current if the served one is
        the previous build's (or the trunk changes, which leaves the old one unservable);
        returns the version. A head the previous build published already is not stored again."""
        head = staged.read_head(task)
        model = head.model_path.read_bytes()
        current = self.repo.current_version(task)
        same = self.builds_version(task)
        if not swap and same is not None and same in self.repo.versions(task):
            stored = self.repo.read_head(task, same)
            if stored.spec == head.spec and stored.model_path.read_bytes() == model:
                self.report(f"head {task}: unchanged (version {same})")
                return same
        make_current = swap or current is None or self.is_builds(task)
        version = self.repo.add_head(head.spec, model, make_current=make_current)
        if make_current:
            self.report(f"head {task}: version {version}, now current")
        else:
            self.report(
                f"head {task}: stored version {version}; version {current} stays current (not "
                f"the previous build's; POST /admin/heads/{task}/rollback with "
                f'{{"version": {version}}} serves the new one)'
            )
        return version

    def _swap_trunk(self, staging: Path) -> None:
        """The new trunk in place of the old by two renames; a replica starting in between finds
        no trunk and is restarted. Replicas already serving keep the old trunk until restarted."""
        root = self.repo.root
        trash = root / TRASH_DIR
        trash.mkdir(exist_ok=True)
        doomed = trash / f"trunk-{self.old.fingerprint[:12]}-{uuid.uuid4().hex[:8]}"
        os.rename(root / TRUNK_DIR, doomed)
        os.rename(staging / TRUNK_DIR, root / TRUNK_DIR)
        fsync_dir(root)
        shutil.rmtree(doomed, ignore_errors=True)
        self.report(
            f"trunk replaced: {self.old.fingerprint[:12]} -> "
            f"{ModelRepository(root).read_trunk_spec().fingerprint[:12]}; restart the serving "
            "replicas to serve it"
        )
