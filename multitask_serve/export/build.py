"""Build a model repository: the trunk plus the heads that need no training.

A build goes into a path that does not exist yet or into an empty directory (a fresh volume, whose
mount point always exists and whose parent may be read-only). The repository is assembled in a
hidden staging directory inside the target and published by renames, heads first and the trunk
last: ``trunk/trunk.json``, what servers and the Kubernetes init container wait for, appears only
when everything else is in place. An interrupted build leaves no trunk, so nothing serves it, and
the next build clears what it left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from multitask_serve.export.encoder import Encoder, load_encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.trunk import install_trunk
from multitask_serve.modelrepo.atomic import fsync_dir
from multitask_serve.modelrepo.pending import PENDING_FILE
from multitask_serve.modelrepo.repository import HEADS_DIR, TRASH_DIR, TRUNK_DIR, ModelRepository

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


# A build's staging directory inside the target; what else a build may leave in a target whose
# trunk never appeared (an interrupted build), and so may clear before building again.
STAGING_PREFIX = ".building-"
BUILD_LEFTOVERS = (HEADS_DIR, TRASH_DIR, PENDING_FILE)


def is_built(root: Path) -> bool:
    """A complete repository is at ``root``: its trunk is published, and so is everything else."""
    return ModelRepository(root).has_trunk()


@contextlib.contextmanager
def building(root: Path) -> Iterator[ModelRepository]:
    """A repository to fill, published at ``root`` when the block ends without an error.

    ``root`` must not exist, or be a directory holding nothing but what an interrupted build
    left; a complete repository or anything else is refused (FileExistsError).
    """
    root = Path(root)
    if is_built(root):
        raise FileExistsError(f"{root} already holds a repository; remove it or build elsewhere")
    root.mkdir(parents=True, exist_ok=True)
    entries = list(root.iterdir())
    foreign = [
        e.name
        for e in entries
        if not e.name.startswith(STAGING_PREFIX) and e.name not in BUILD_LEFTOVERS
    ]
    if foreign:
        raise FileExistsError(
            f"{root} is not empty ({', '.join(sorted(foreign)[:5])}); build into a new path or an "
            "empty directory"
        )
    for leftover in entries:  # an interrupted build's: it never published a trunk
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        yield ModelRepository(staging)
        for name in sorted(p.name for p in staging.iterdir() if p.name != TRUNK_DIR):
            os.rename(staging / name, root / name)
        fsync_dir(root)
        os.rename(staging / TRUNK_DIR, root / TRUNK_DIR)  # last: the repository is complete
        fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_repository(
    root: Path,
    encoder: Encoder | None = None,
    zero_shot: dict[str, dict[str, str]] | None = None,
    report: Report = print,
) -> ModelRepository:
    """Build the trunk and the training-free heads at ``root`` (see ``building``)."""
    started = time.perf_counter()
    with building(root) as repo:
        install_training_free(repo, encoder, zero_shot, report)
    report(f"built {root} in {time.perf_counter() - started:.1f} s")
    return ModelRepository(root)


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
