"""Read-only directories for one process: what a read-only volume or root filesystem is to a pod.

``chmod`` does not stop root, and the tests run as root in CI. A read-only bind mount does: the
process runs in a mount namespace of its own (``unshare``, with a user namespace, so that it needs
no privilege a developer lacks), where each named directory is bound onto itself read-only;
writes there fail with EROFS whoever makes them, and nothing outside the process sees a change.
``unshare`` and ``sh`` exec in turn, so the process keeps the pid it was started with (signals
reach it directly).

Imported as ``support.readonly`` by the tests.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

# Binds each of the first $1 arguments onto itself read-only, then runs the rest.
_SCRIPT = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 125; '
    "shift; n=$((n - 1)); done; "
    'exec "$@"'
)


def read_only(paths: Sequence[Path], argv: Sequence[str]) -> list[str]:
    """``argv`` run with each of ``paths`` (existing directories) read-only."""
    unshare = shutil.which("unshare") or "unshare"
    return [
        unshare,
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        _SCRIPT,
        "sh",
        str(len(paths)),
        *(str(p) for p in paths),
        *argv,
    ]


@functools.cache
def unavailable() -> str | None:
    """Why ``read_only`` does not work here (None: it does, and it refuses a write)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    with tempfile.TemporaryDirectory(prefix="read-only-") as tmp:
        probe = Path(tmp) / "probe"
        try:
            done = subprocess.run(
                read_only([Path(tmp)], ["sh", "-c", f"echo x > {probe}"]),
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unshare did not run: {exc}"
        if done.returncode == 125 or probe.exists():
            return f"no read-only bind mount in a user namespace here: {done.stderr.strip()}"
        if "Read-only file system" not in done.stderr:
            return f"the write failed for another reason: {done.stderr.strip()}"
    return None
