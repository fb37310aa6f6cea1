"""``mts serve``: settings from flags and MTS_* variables, the first-run build in child processes.

Nothing here imports torch: the build runs as ``mts build`` in a child, so the server never maps
libtorch. The first run builds only what needs no training (seconds) and serves it; the default
trained heads train in another child while the server answers (``mts train-pending``, followed
by service/pending.py), each served as soon as it passes the admin API's checks.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from multitask_serve.cli.common import is_built
from multitask_serve.modelrepo.pending import read_pending
from multitask_serve.modelrepo.types import SpecError

if TYPE_CHECKING:
    from multitask_serve.service.settings import Settings
from multitask_serve.service.logs import configure as configure_logging

# Settings with flags of their own below, or that only make sense in the environment.
_OWN_FLAGS = {"repository", "host", "port", "log_level"}


def _mts(log_level: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "multitask_serve", "--log-level", log_level, *args]


def _build_in_child(repo: Path, encoder: str | None, train_heads: bool, log_level: str) -> int:
    """``mts build --if-missing`` in a child process; its exit status.

    Building imports torch; done in the serving process, libtorch stayed mapped for the server's
    whole life. The build trains nothing: with ``train_heads`` it lists the default trained heads
    as pending (``--train-later``), for the server to train while it answers. The child's output
    is this process's: its progress lines show where the server's would. A SIGTERM while it runs
    (a pod deleted during the first start) stops the child too.
    """
    command = _mts(log_level, "build", "--repo", str(repo), "--if-missing")
    command += ["--encoder", encoder] if encoder else []
    command += ["--train-later"] if train_heads else ["--no-train"]
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
        app = create_app(settings, train_pending=_train_pending(settings, args))
    except (
        ValidationError,
        RepositoryError,
        RuntimeUnavailable,
        FileNotFoundError,
        FileExistsError,
        SpecError,
    ) as exc:
        # A configuration mistake, not a crash: one clear message, no traceback.
        print(f"mts serve: {exc}", file=sys.stderr)
        return 2
    serve(app, settings)
    return 0


def _train_pending(settings: Settings, args: argparse.Namespace) -> list[str] | None:
    """The child command that trains the repository's pending heads, or None when this start does
    not train them (no --build-if-missing, --no-train, or nothing pending)."""
    repo = settings.repository
    if not args.build_if_missing or read_pending(repo) is None:
        return None
    if args.no_train:
        print(
            f"mts serve: {repo} has heads pending training (pending-heads.json); --no-train "
            "leaves them pending",
            file=sys.stderr,
        )
        return None
    command = _mts(settings.log_level, "train-pending", "--repo", str(repo))
    return command + (["--encoder", args.encoder] if args.encoder else [])


def add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="serve a model repository (settings: MTS_* variables)")
    serve.add_argument("--repo", type=Path, help="model repository (default: MTS_REPOSITORY)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--build-if-missing",
        action="store_true",
        help="build the default repository first if --repo holds none (in a child process: the "
        "server never loads torch): serve the trunk and training-free heads at once and train "
        "the default heads in another child, serving each when it is ready (GET /tasks shows "
        "their progress); a restart trains only those still pending",
    )
    serve.add_argument(
        "--no-train",
        action="store_true",
        help="with --build-if-missing: build and train no trained heads",
    )
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
