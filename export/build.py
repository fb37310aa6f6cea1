"""Build a model repository: the trunk plus the heads that need no training.

The repository is assembled in a sibling directory and renamed into place at the end, so an
interrupted build leaves nothing that looks like a repository.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from multitask_serve.export.encoder import Encoder, load_encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.trunk import install_trunk
from multitask_serve.modelrepo.atomic import fsync_dir
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


def build_repository(
    root: Path,
    encoder: Encoder | None = None,
    zero_shot: dict[str, dict[str, str]] | None = None,
    report: Report = print,
) -> ModelRepository:
    """Create a repository at ``root`` (which must not exist yet) and return it."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} exists; remove it or build elsewhere")
    heads = DEFAULT_ZERO_SHOT if zero_shot is None else zero_shot
    staging = root.with_name(f".{root.name}.building-{uuid.uuid4().hex[:8]}")
    steps = 2 + len(heads)
    try:
        started = time.perf_counter()
        if encoder is None:
            report(f"[0/{steps}] loading the default encoder")
            encoder = load_encoder()
        repo = ModelRepository(staging)
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
        os.rename(staging, root)
        fsync_dir(root.parent)
        report(f"built {root} in {time.perf_counter() - started:.1f} s")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelRepository(root)
