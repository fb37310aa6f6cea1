"""``mts build`` (the trunk and the default heads) and ``mts quantize`` (int8 trunk or head).

Both need the train extra; they import it when they run, so the parser builds without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from importlib.metadata import version
from pathlib import Path

from multitask_serve.cli.common import (
    ENCODER_HELP,
    head_precision_flag,
    is_built,
    needs_train_extra,
)
from multitask_serve.modelrepo.builds import (
    TrunkChanged,
    build_lock,
    identity,
    is_current,
    leftovers,
)


def _build(args: argparse.Namespace, heads: str) -> None:
    """``heads``: "train" (trained before publishing), "later" (listed as pending) or "none"."""
    try:
        from multitask_serve.export.build import DEFAULT_ZERO_SHOT, build_repository
        from multitask_serve.export.encoder import load_encoder
        from multitask_serve.export.progress import library_bars
        from multitask_serve.export.publish import Target
        from multitask_serve.training.build import (
            DEFAULT_HEADS,
            build_training_later,
            build_with_heads,
        )
    except ImportError as exc:
        needs_train_extra(exc)
    repo, encoder, head_precision = args.repo, args.encoder, args.head_precision
    # What decides the build's output: a build with another identity is outdated.
    recipe = {
        "zero_shot": DEFAULT_ZERO_SHOT,
        "heads": [] if heads == "none" else [dataclasses.asdict(c) for c in DEFAULT_HEADS],
        "head_precision": head_precision,
    }
    wanted = identity(
        package=version("multitask-serve"), encoder=encoder, heads=heads, recipe=recipe
    )
    if args.if_outdated and is_built(repo) and is_current(repo, wanted):
        print(f"{repo} holds this build already ({', '.join(wanted.values())}); not rebuilding")
        return
    target = Target(wanted, update=args.if_outdated, replace_trunk=args.replace_trunk)
    library_bars()
    loaded = load_encoder(encoder) if encoder else None
    if heads == "train":
        build_with_heads(repo, loaded, head_precision=head_precision, target=target)
    elif heads == "later":
        # Resolved: the server that trains them may run from another directory.
        source = str(Path(encoder).resolve()) if encoder else None
        build_training_later(repo, loaded, source, head_precision=head_precision, target=target)
    else:
        build_repository(repo, loaded, target=target)


def cmd_build(args: argparse.Namespace) -> int:
    if args.no_train and args.train_later:
        sys.exit("mts build: --no-train and --train-later exclude each other")
    if args.if_missing and args.if_outdated:
        sys.exit("mts build: --if-missing and --if-outdated exclude each other")
    if args.if_outdated and args.train_later:
        sys.exit("mts build: --if-outdated updates with trained heads or none, not --train-later")
    if args.replace_trunk and not args.if_outdated:
        sys.exit("mts build: --replace-trunk goes with --if-outdated")
    heads = "none" if args.no_train else "later" if args.train_later else "train"
    try:
        if not is_built(args.repo):
            leftovers(args.repo)  # someone's files: refused before the lock file is made there
        # Held for the check and the build: a second build waits, then finds the first's.
        with build_lock(args.repo):
            if args.if_missing and is_built(args.repo):
                print(f"{args.repo} holds a complete repository; not rebuilding")
                return 0
            _build(args, heads)
    except (FileExistsError, TrunkChanged) as exc:
        sys.exit(f"mts build: {exc}")
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        sys.exit(
            f"mts build: cannot write {args.repo} as uid {os.getuid()} ({exc.strerror}); the "
            "volume must be writable by it (docs/deploy.md, 'The build Job and the volume')"
        )
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    try:
        from multitask_serve.export.quantize import INT8, quantize_trunk
        from multitask_serve.modelrepo.repository import ModelRepository
    except ImportError as exc:
        needs_train_extra(exc)
    if args.head or args.archive:
        return _quantize_head(args)
    spec = quantize_trunk(ModelRepository(args.repo))
    variant = spec.variants[INT8]
    print(
        f"wrote {args.repo / 'trunk' / variant.file}: taps vs fp32 max abs diff "
        f"{variant.max_abs_diff:.3g}, min cosine {variant.min_cosine:.6f}; serve it with "
        f"MTS_TRUNK_PRECISION={INT8}"
    )
    return 0


def _quantize_head(args: argparse.Namespace) -> int:
    from multitask_serve.export.quantize import QuantizationError, quantize_head_for
    from multitask_serve.modelrepo.archive import ArchiveError, pack_head, unpack_head
    from multitask_serve.modelrepo.atomic import atomic_write
    from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError

    repo = ModelRepository(args.repo)
    if bool(args.head) == bool(args.archive) or bool(args.archive) != bool(args.out):
        sys.exit("mts quantize: give --head TASK, or --archive IN.tar.gz with --out OUT.tar.gz")
    try:
        if args.archive:
            # A local file the user names, so no upload limit; 4 GiB bounds a corrupt one.
            spec, model = unpack_head(args.archive.read_bytes(), 4 << 30)
        else:
            stored = repo.read_head(args.head, args.version)
            spec, model = stored.spec, stored.model_path.read_bytes()
        spec, model = quantize_head_for(repo, spec, model)
    except (ArchiveError, RepositoryError, QuantizationError, OSError) as exc:
        sys.exit(f"mts quantize: {exc}")
    figures = spec.training["quantization"]
    done = (
        f"int8 {spec.task} head: probabilities within {figures['probability_max_abs_diff']:.3g} "
        f"of the fp32 graph's on the sample texts, logits within {spec.parity_max_abs_diff:.3g}"
    )
    if args.archive:
        atomic_write(args.out.resolve(), pack_head(spec, model))
        print(f"wrote {args.out}: {done}")
    else:
        version = repo.add_head(spec, model, make_current=not args.keep_current)
        served = "kept the current version" if args.keep_current else "now current"
        print(f"added {spec.task} version {version} to {args.repo} ({served}): {done}")
    return 0


def add_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = sub.add_parser("build", help="export the trunk and build the default heads")
    build.add_argument("--repo", type=Path, default=Path("model-repo"))
    build.add_argument("--encoder", help=ENCODER_HELP)
    build.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if --repo holds a complete repository (it may be an empty directory)",
    )
    build.add_argument(
        "--if-outdated",
        action="store_true",
        help="build if --repo is empty; if it holds a repository that another build made (its "
        "build.json: package version, encoder, recipe), add this build's heads to it as new "
        "versions, keeping every other head; a new trunk replaces the old one only if no head "
        "but the old build's is bound to it (else nothing changes and the build fails)",
    )
    build.add_argument(
        "--replace-trunk",
        action="store_true",
        help="with --if-outdated: replace a trunk that heads are bound to even so; those heads "
        "stay stored, unserved, listed in the output and build.json",
    )
    build.add_argument(
        "--no-train",
        action="store_true",
        help="only the training-free heads (embed, zero-shot): seconds, not minutes",
    )
    build.add_argument(
        "--train-later",
        action="store_true",
        help="publish the training-free heads at once and list the default trained heads in "
        "pending-heads.json, for `mts serve --build-if-missing` to train while it serves",
    )
    head_precision_flag(build, "the trained heads' weights")
    build.set_defaults(func=cmd_build)


def add_quantize(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quant = sub.add_parser(
        "quantize",
        help="add an int8 variant of the trunk (per-channel weights, activations scaled per row; "
        "heads stay valid; replaces one made per batch), or make an int8 copy of a trained head",
    )
    quant.add_argument("--repo", type=Path, default=Path("model-repo"))
    quant.add_argument(
        "--head",
        metavar="TASK",
        help="quantize this task's fp32 head instead of the trunk and store the copy as a new "
        "version, made current (rollback serves the fp32 version again)",
    )
    quant.add_argument("--version", type=int, help="with --head: the version to quantize")
    quant.add_argument(
        "--keep-current", action="store_true", help="with --head: store, but do not serve yet"
    )
    quant.add_argument(
        "--archive",
        type=Path,
        help="quantize the head in this archive instead (for --repo's trunk); needs --out",
    )
    quant.add_argument("--out", type=Path, help="with --archive: the int8 head's archive")
    quant.set_defaults(func=cmd_quantize)
