"""What builds keep in a repository's root: their lock, their stamp, and a volume's own entries.

``mts build`` runs as a Job on a shared volume, so two builds may meet there (a new release while
the first still runs), and the volume may hold what its file system put there (``lost+found``),
which builds leave alone. One build at a time holds ``.build.lock`` (flock, for the whole build;
the other waits, then finds the repository built). ``build.json`` records what built the
repository (the package version, the encoder, a fingerprint of the recipe: ``identity``), so
that ``mts build --if-outdated`` rebuilds only when it would build something else, and which
versions of which heads that build published, so that a later build never moves a head someone
served since.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multitask_serve.modelrepo.atomic import atomic_write
from multitask_serve.modelrepo.pending import PENDING_FILE
from multitask_serve.modelrepo.repository import HEADS_DIR, TRASH_DIR


class TrunkChanged(RuntimeError):
    """The new build's trunk would orphan heads that the previous build did not make."""


LOCK_FILE = ".build.lock"
STAMP_FILE = "build.json"
STAMP_SCHEMA_VERSION = 1
# What a fresh volume may hold before any build, left alone by builds: ext4's lost+found (a new
# ext4-backed claim, Filestore, some RWX drivers) and the snapshot folder NFS filers (NetApp
# ONTAP, Azure NetApp Files) show at an export's root. Anything else is someone's data.
VOLUME_ENTRIES = frozenset({"lost+found", ".snapshot"})

# A build's staging directory inside the target; what else a build may leave in a target whose
# trunk never appeared (an interrupted build), and so may clear before building again.
STAGING_PREFIX = ".building-"
BUILD_LEFTOVERS = (HEADS_DIR, TRASH_DIR, PENDING_FILE, STAMP_FILE)
# What a build leaves alone in its target: the volume's own entries and the build lock.
KEPT = VOLUME_ENTRIES | {LOCK_FILE}

# Roots whose lock this thread holds: a build inside a locked section does not lock again (a
# second flock on a new descriptor of the same file would wait for ourselves).
_thread = threading.local()


def _held() -> set[Path]:
    if not hasattr(_thread, "held"):
        _thread.held = set()
    held: set[Path] = _thread.held
    return held


def leftovers(root: Path) -> list[Path]:
    """What interrupted builds left in ``root``, a target holding no trunk (nothing if it does
    not exist); FileExistsError if it holds anything else: someone's files, never built over."""
    root = Path(root)
    if not root.is_dir():
        return []
    entries = [e for e in root.iterdir() if e.name not in KEPT]
    foreign = [
        e.name
        for e in entries
        if not e.name.startswith(STAGING_PREFIX) and e.name not in BUILD_LEFTOVERS
    ]
    if foreign:
        raise FileExistsError(
            f"{root} is not empty ({', '.join(sorted(foreign)[:5])}); build into a new path or an "
            f"empty directory (only {', '.join(sorted(VOLUME_ENTRIES))} may be there)"
        )
    return entries


@contextlib.contextmanager
def build_lock(root: Path, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``root``'s build lock (creating ``root`` if needed) until the block ends.

    flock(2) on a file in the volume: on NFS the Linux client takes it as a lock on the whole
    file through the server (NFSv4 locks, or lockd for v3), so builds on different nodes exclude
    each other; a build whose node dies loses it when the server's lease runs out (about 90 s on
    NFSv4). A mount with ``nolock`` keeps locks on one node: do not use one for the models volume.
    ``say``: told once when the lock is busy and this build waits.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = Path(os.path.realpath(root))
    if key in _held():
        yield
        return
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            (say or _stderr)(f"{root}: another build holds {LOCK_FILE}; waiting for it to end")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held().add(key)
        try:
            yield
        finally:
            _held().discard(key)
    finally:
        os.close(fd)  # releases the lock; the file stays, so no two builds lock different files


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def identity(**parts: Any) -> dict[str, str]:
    """A build's identity from what decides its output: plain values as they are, anything else
    (a recipe's configs) as a short sha256 of its JSON."""
    out = {}
    for name, value in parts.items():
        if value is None or isinstance(value, str):
            out[name] = "default" if value is None else value
        else:
            text = json.dumps(value, sort_keys=True, default=str)
            out[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


@dataclass(frozen=True)
class Stamp:
    """What ``build.json`` records: the build's identity, its trunk, the head versions it
    published (task -> version), and the tasks whose served heads its new trunk orphaned."""

    identity: dict[str, str]
    trunk_fingerprint: str
    heads: dict[str, int] = field(default_factory=dict)
    orphaned: tuple[str, ...] = ()
    schema_version: int = STAMP_SCHEMA_VERSION

    def to_json(self) -> bytes:
        body = {
            "schema_version": self.schema_version,
            "identity": self.identity,
            "trunk_fingerprint": self.trunk_fingerprint,
            "heads": self.heads,
            "orphaned": list(self.orphaned),
        }
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, text: bytes | str) -> Stamp:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema_version") != STAMP_SCHEMA_VERSION:
            raise ValueError(f"{STAMP_FILE}: not a schema {STAMP_SCHEMA_VERSION} build stamp")
        return cls(
            identity={str(k): str(v) for k, v in dict(data["identity"]).items()},
            trunk_fingerprint=str(data["trunk_fingerprint"]),
            heads={str(k): int(v) for k, v in dict(data.get("heads", {})).items()},
            orphaned=tuple(str(t) for t in data.get("orphaned", [])),
        )


def read_stamp(root: Path) -> Stamp | None:
    """The stamp of the build that made ``root``; None when there is none (a build before
    stamps) or it cannot be read (then every identity differs from it)."""
    try:
        return Stamp.from_json((Path(root) / STAMP_FILE).read_bytes())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_stamp(root: Path, stamp: Stamp) -> None:
    atomic_write(Path(root) / STAMP_FILE, stamp.to_json())


def is_current(root: Path, wanted: Mapping[str, str]) -> bool:
    stamp = read_stamp(root)
    return stamp is not None and stamp.identity == dict(wanted)
