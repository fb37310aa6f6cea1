"""Build a model repository: the trunk plus the heads that need no training.

A build goes into a path that does not exist yet or into an empty directory (a fresh volume, whose
mount point always exists and whose parent may be read-only; what the volume's file system keeps
there, ``lost+found``, is left alone: modelrepo/builds.py). The repository is assembled in a
hidden staging directory inside the target and published by renames, heads first and the trunk
last: ``trunk/trunk.json``, what servers and the Kubernetes init container wait for, appears only
when everything else is in place. An interrupted build leaves no trunk, so nothing serves it, and
the next build clears what it left. One build at a time holds the target's build lock, so a
second build waits instead of clearing the first one's staging directory. A build may also update
a complete repository (export/publish.py).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from multitask_serve.export.encoder import Encoder, load_encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.publish import StagedRepository, Target, Update, publish_fresh
from multitask_serve.export.trunk import install_trunk
from multitask_serve.modelrepo.builds import STAGING_PREFIX, build_lock, leftovers
from multitask_serve.modelrepo.repository import ModelRepository

# Label descriptions for the zero-shot heads of the default repository. Each label is scored by
# the cosine between the text and its description, both embedded by the frozen trunk.
DEFAULT_ZERO_SHOT: dict[str, dict[str, str]] = {
    "topic-zs": {
        "business": "business, companies, markets, trade, finance and the economy",
        "entertainment": "entertainment, films, music, television, actors and celebrities",
        "politics": "politics, government, elections, ministers and parliament",
        "sport": "sport, football, tennis, athletes, teams and matches",
        "tech": "technology, computers, software, the internet and gadgets",
    },
    "sentiment-zs": {
        "negative": "I am unhappy, this is bad, awful and disappointing.",
        "neutral": "This is a plain factual statement with no feeling either way.",
        "positive": "I am happy, this is good, great and delightful.",
    },
}

Report = Callable[[str], None]


def is_built(root: Path) -> bool:
    """A complete repository is at ``root``: its trunk is published, and so is everything else."""
    return ModelRepository(root).has_trunk()


@contextlib.contextmanager
def building(
    root: Path, target: Target | None = None, tasks: Sequence[str] = (), report: Report = print
) -> Iterator[ModelRepository]:
    """A repository to fill, published at ``root`` when the block ends without an error.

    ``root`` must not exist, or be a directory holding nothing but what an interrupted build
    left (and what the volume keeps, ``KEPT``); anything else is refused (FileExistsError). A
    complete repository is refused too, unless ``target.update``: then the staged build is
    published into it as an update (``tasks``: the heads the build makes; export/publish.py).
    The build holds ``root``'s build lock throughout.
    """
    root = Path(root)
    target = target or Target()
    if not is_built(root):
        leftovers(root)  # someone's files: refused before the lock file is made beside them
    with build_lock(root, report):
        update = None
        if is_built(root):
            if not target.update:
                raise FileExistsError(
                    f"{root} already holds a repository; remove it or build elsewhere"
                )
            update = Update(root, tasks, target.replace_trunk, report)
            for dead in root.glob(f"{STAGING_PREFIX}*"):  # a killed update's; the lock is ours
                shutil.rmtree(dead, ignore_errors=True)
        else:
            _clear_leftovers(root)
        staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
        try:
            yield StagedRepository(staging, None if update is None else update.check_trunk)
            if update is None:
                publish_fresh(staging, root, target.identity)
            else:
                update.publish(staging, target.identity)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _clear_leftovers(root: Path) -> None:
    """What an interrupted build left (it never published a trunk; the lock is ours, so no
    other build is running); FileExistsError if ``root`` holds anything else."""
    for leftover in leftovers(root):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def build_repository(
    root: Path,
    encoder: Encoder | None = None,
    zero_shot: dict[str, dict[str, str]] | None = None,
    report: Report = print,
    target: Target | None = None,
) -> ModelRepository:
    """Build the trunk and the training-free heads at ``root`` (see ``building``)."""
    started = time.perf_counter()
    tasks = training_free_tasks(zero_shot)
    with building(root, target, tasks, report) as repo:
        install_training_free(repo, encoder, zero_shot, report)
    report(f"built {root} in {time.perf_counter() - started:.1f} s")
    return ModelRepository(root)


def training_free_tasks(zero_shot: dict[str, dict[str, str]] | None = None) -> list[str]:
    return ["embed", *(DEFAULT_ZERO_SHOT if zero_shot is None else zero_shot)]


def install_training_free(
    repo: ModelRepository,
    encoder: Encoder | None = None,
    zero_shot: dict[str, dict[str, str]] | None = None,
    report: Report = print,
) -> Encoder:
    """The trunk, the embedding head and the zero-shot heads, into ``repo``; returns the encoder."""
    heads = DEFAULT_ZERO_SHOT if zero_shot is None else zero_shot
    steps = 2 + len(heads)
    if encoder is None:
        report(f"[0/{steps}] loading the default encoder")
        encoder = load_encoder()
    t = time.perf_counter()
    trunk = install_trunk(repo, encoder)
    report(
        f"[1/{steps}] trunk: {encoder.base_model}, {trunk.num_layers} layers, "
        f"hidden {trunk.hidden_size}, parity max abs diff {trunk.parity_max_abs_diff:.2e} "
        f"({time.perf_counter() - t:.1f} s)"
    )
    exporter = HeadExporter(encoder, trunk)
    made = [exporter.embedding("embed")]
    made += [exporter.zero_shot(task, labels) for task, labels in heads.items()]
    for i, (spec, model) in enumerate(made, start=2):
        repo.add_head(spec, model)
        report(
            f"[{i}/{steps}] head {spec.task}: {spec.kind}, tap {spec.branch_layer}, "
            f"parity max abs diff {spec.parity_max_abs_diff:.2e}"
        )
    return encoder
