"""``mts train`` (fine-tune one head, one flag per recipe field) and ``mts eval`` (score a head).

Both need the train extra; they import it when they run. Without it the recipe flags are left
out and the commands say which extras they need.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from multitask_serve.cli.common import ENCODER_HELP, head_precision_flag, needs_train_extra


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from multitask_serve.export.encoder import load_encoder
        from multitask_serve.export.heads import HeadExporter
        from multitask_serve.modelrepo.archive import pack_head
        from multitask_serve.modelrepo.atomic import atomic_write
        from multitask_serve.modelrepo.repository import ModelRepository
        from multitask_serve.training.train import TrainConfig, export_run, train
    except ImportError as exc:
        needs_train_extra(exc)
    repo = ModelRepository(args.repo)
    encoder = load_encoder(args.encoder)
    exporter = HeadExporter.for_repository(encoder, repo)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        result = train(config, encoder)
    except ValueError as exc:  # DataError, an unknown strategy or schedule: the user's input
        sys.exit(f"mts train: {exc}")
    spec, model = export_run(result, exporter, args.head_precision)
    out = args.out or Path(f"{args.task}-{args.strategy}-seed{args.seed}.tar.gz")
    atomic_write(out.resolve(), pack_head(spec, model))
    for point in result.depth_curve:
        tap, score = point["branch_layer"], point["score"]
        print(f"depth {point['depth']} (tap {tap}): validation {score:.4f}")
    print(f"validation {result.validation}\ntest {result.test}")
    print(
        f"wrote {out}: {spec.kind}, tap {spec.branch_layer}, {spec.precision}, "
        f"parity {spec.parity_max_abs_diff:.2e}, {result.train_seconds:.0f} s"
    )
    if args.add:
        version = repo.add_head(spec, model)
        print(
            f"added {args.task} version {version} to {args.repo} (served after a restart; "
            f"or upload {out} to a running service's /admin/heads/{args.task})"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        from multitask_serve.modelrepo.archive import ArchiveError
        from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError
        from multitask_serve.modelrepo.types import SpecError
        from multitask_serve.training.evaluate import evaluate_file, write
    except ImportError as exc:
        needs_train_extra(exc)
    try:
        result = evaluate_file(
            args.head,
            args.data,
            ModelRepository(args.repo),
            args.text_column,
            args.label_column,
            args.max_length,
        )
    except (ValueError, RepositoryError, ArchiveError, SpecError, OSError) as exc:
        sys.exit(f"mts eval: {exc}")
    print(f"{result.task} ({result.kind}) on {result.examples} examples of {args.data}")
    print("  ".join(f"{k} {v:.4f}" for k, v in result.overall.items()))
    width = max(len(name) for name in [*result.per_label, "label"])
    print(f"{'label':<{width}}  precision  recall  f1      support")
    for name, m in result.per_label.items():
        print(
            f"{name:<{width}}  {m['precision']:.4f}     {m['recall']:.4f}  {m['f1']:.4f}  "
            f"{int(m['support'])}"
        )
    written = write(result, args.out)
    if len(written) == 1:
        print("confusion plot skipped: matplotlib is not installed (pip install matplotlib)")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tr = sub.add_parser("train", help="fine-tune one head and write its archive")
    tr.add_argument("--task", required=True, help="the task name the head serves")
    tr.add_argument(
        "--data",
        required=True,
        help="sentiment, topic, ner, or a .csv/.jsonl (text,label) or .conll file",
    )
    tr.add_argument(
        "--strategy",
        default="top-2",
        help="head-only, top-<k>, progressive or full (default top-2)",
    )
    tr.add_argument(
        "--repo",
        type=Path,
        default=Path("model-repo"),
        help="the repository whose trunk the head is for",
    )
    tr.add_argument("--encoder", help=ENCODER_HELP + "; must be the trunk's")
    _recipe_flags(tr)
    tr.add_argument(
        "--out", type=Path, help="archive path (default <task>-<strategy>-seed<n>.tar.gz)"
    )
    head_precision_flag(tr, "the head's weights")
    tr.add_argument("--add", action="store_true", help="also store it in --repo as a new version")
    tr.set_defaults(func=cmd_train)


def add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "eval", help="score a head on a labelled file: per-class metrics, confusion matrix"
    )
    ev.add_argument(
        "--head",
        required=True,
        help="a head archive (.tar.gz), a head version directory, or a task served by --repo",
    )
    ev.add_argument(
        "--data", required=True, type=Path, help="a .csv/.jsonl (text,label) or .conll file"
    )
    ev.add_argument(
        "--repo", type=Path, default=Path("model-repo"), help="the repository of the head's trunk"
    )
    ev.add_argument("--text-column", default="text")
    ev.add_argument("--label-column", default="label")
    ev.add_argument(
        "--max-length", type=int, help="tokens per text (default: the head's training length)"
    )
    ev.add_argument(
        "--out", type=Path, default=Path("eval"), help="where metrics.json and confusion.png go"
    )
    ev.set_defaults(func=cmd_eval)


def _recipe_flags(tr: argparse.ArgumentParser) -> None:
    """``mts train``'s recipe: one flag per TrainConfig field, its default the config's.

    Without the training package (a serving install) the flags are left out; ``mts train`` then
    says which extras it needs.
    """
    try:
        from multitask_serve.training.config import TrainConfig
    except ImportError:
        return

    d = TrainConfig(task="", data="")
    g = tr.add_argument_group("recipe (defaults: the default build's)")

    def add(
        flag: str, kind: Callable[[str], object], text: str, choices: list[str] | None = None
    ) -> None:
        default = getattr(d, flag[2:].replace("-", "_"))
        g.add_argument(
            flag, type=kind, default=default, choices=choices, help=f"{text} (default {default})"
        )

    add("--seed", int, "training seed")
    add("--split-seed", int, "seed of the train/validation/test split")
    add("--epochs", int, "most epochs (per depth for progressive); unset: 10 head-only, else 4")
    add("--batch-size", int, "examples per step")
    add("--layer-lr", float, "peak learning rate of the top owned layer")
    add("--lr-decay", float, "each layer below learns at this times the rate above (1: same)")
    add("--head-lr", float, "peak learning rate of the classifier")
    add("--warmup", float, "fraction of steps warming up linearly from 0")
    add("--schedule", str, "after warm-up", choices=["linear", "constant"])
    add(
        "--mixed-precision",
        str,
        "bf16: train under bfloat16 autocast (epochs about 1.5x faster on CPUs with AMX or "
        "AVX512-BF16, slower on others); auto: bf16 where the CPU has them; weights, "
        "evaluation and export stay fp32",
        choices=["none", "bf16", "auto"],
    )
    add("--grad-clip", _optional_float, "max gradient norm; 'none' to not clip")
    add("--weight-decay", float, "AdamW weight decay")
    add(
        "--patience",
        _optional_int,
        "epochs without a validation gain before stopping "
        "(progressive: before unfreezing one more layer); 'none' never stops early",
    )
    add("--tolerance", float, "progressive: serve the shallowest depth within this of the best")
    add("--max-depth", _optional_int, "progressive: deepest depth tried; unset: every layer")
    add(
        "--depth-patience",
        _optional_int,
        "progressive: stop after this many deeper depths without a new best; unset: go on",
    )
    add("--max-length", int, "tokens per text (longer texts are truncated)")
    add("--max-train", _optional_int, "subsample the training split")
    add("--max-eval", _optional_int, "cap validation and test examples")
    add("--pooling", str, "sequence classification pooling", choices=["mean", "cls"])
    add("--text-column", str, "text column (CSV) or key (JSON lines)")
    add("--label-column", str, "label column (CSV) or key (JSON lines)")
    g.add_argument(
        "--group-by-length",
        action=argparse.BooleanOptionalAction,
        default=d.group_by_length,
        help="batch examples of similar length together, less padding computed "
        f"(default {d.group_by_length})",
    )
    g.add_argument(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=d.class_weights,
        help=f"weight the loss by inverse class frequency (default {d.class_weights})",
    )


def _optional_int(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


def _optional_float(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)
