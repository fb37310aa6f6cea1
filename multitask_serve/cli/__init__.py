"""``mts``: build a model repository, train heads, regenerate the report, serve.

Commands that need torch import it lazily, so ``mts serve`` works from the serving install alone.
"""

from __future__ import annotations

import argparse
import logging

from multitask_serve.cli.build import add_build, add_quantize
from multitask_serve.cli.fleet import add_fleet
from multitask_serve.cli.pending import add_train_pending
from multitask_serve.cli.report import add_report
from multitask_serve.cli.serve import add_serve
from multitask_serve.cli.train import add_eval, add_train
from multitask_serve.service.logs import configure as configure_logging


def _logging(level: str) -> None:
    # Text to stderr (``mts serve`` switches to MTS_LOG_FORMAT once it has read its settings).
    configure_logging("text", level)
    # The ONNX exporter's optimiser logs every pass at INFO.
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    # In this order in `mts --help`.
    for add in (
        add_build,
        add_serve,
        add_fleet,
        add_train,
        add_eval,
        add_quantize,
        add_report,
        add_train_pending,
    ):
        add(sub)
    return p


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
