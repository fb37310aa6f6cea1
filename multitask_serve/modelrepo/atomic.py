"""Crash-safe file system writes: write aside, fsync, rename into place.

A reader (or a process restarted after kill -9) sees either the old state or the new one, never a
half-written file or directory. Temporary names live in the same directory tree as their target so
that ``os.replace`` stays a same-filesystem rename.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_file_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def staged_dir(parent: Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` into a new hidden directory under ``parent`` and return it, all fsynced."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".staging-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            write_file_synced(tmp / name, data)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def discard_dir(path: Path, trash: Path) -> None:
    """Remove a directory atomically (rename into ``trash``), then delete it at leisure."""
    trash.mkdir(parents=True, exist_ok=True)
    doomed = trash / f"{path.name}-{uuid.uuid4().hex}"
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
