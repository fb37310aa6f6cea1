"""``mts serve``: settings from flags and MTS_* variables, the first-run build in a child process.

Nothing here imports torch: the build runs as ``mts build`` in a child, so the server never maps
libtorch.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from multitask_serve.cli.common import is_built
from multitask_serve.service.logs import configure as configure_logging

# Settings with flags of their own below, or that only make sense in the environment.
_OWN_FLAGS = {"repository", "host", "port", "log_level"}


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
        if args.build_if_missing and not is_built(settings.repository):
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


def add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
