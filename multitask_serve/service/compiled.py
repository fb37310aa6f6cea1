"""A replica's own cache of compiled heads: what makes loading an evicted head again cheap.

A head with copied layers spends most of a cold load parsing its graph, copying its weights
and packing them for the CPU's matrix kernels, allocating and freeing three copies of them
(bench/cold_loads.py). ``Runtime.compile`` writes a head as ONNX Runtime runs it: the optimised
graph, and its weights with their packed forms in one file that a later session maps from the
page cache instead. A compiled head answers bit for bit as the head it was made from (its
kernels and weights are the same; tests/integration/test_compiled_heads.py checks every kind).

The packed forms are this CPU's and this ONNX Runtime's, so the cache is the replica's own
(``MTS_HEAD_CACHE_DIR``, local disk, never the shared repository), keyed by both
(``compiled_key``), and by the stored graph's identity (size, mtime, inode): a task removed and
stored again under the same version number is compiled again. A head is compiled once it has
been loaded from the repository twice (evicted and asked for again: reuse shown), after that
load, on a background thread at the loads' lower CPU priority, so no load waits on a
compilation; its later loads read the compiled form. Past ``MTS_HEAD_CACHE_MB`` the
least recently used compiled heads are deleted (a session made from one keeps its mapping).
Heads smaller than ``min_graph_bytes`` (``MTS_HEAD_CACHE_MIN_MB``; classifier-only heads, a few
KB that load in a few milliseconds) are not compiled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from multitask_serve.service.metrics import Metrics
from multitask_serve.service.sessions import COMPILED_GRAPH, Runtime, compiled_key

log = logging.getLogger(__name__)

# Compilations waiting for the background thread at most; past it, a load compiles nothing.
MAX_PENDING = 8
# A head is compiled at its second load from the repository (its first load again after an
# eviction); the loads of the MAX_COUNTED graphs loaded most recently are counted.
COMPILE_AT_LOAD = 2
MAX_COUNTED = 100_000
STAGING_PREFIX = ".staging-"


class CompiledHeads:
    def __init__(
        self,
        root: Path,
        max_bytes: int,
        runtime: Runtime,
        executor: Executor,
        metrics: Metrics,
        min_graph_bytes: int,
    ) -> None:
        """Compiled heads under ``root``, at most ``max_bytes`` of them, compiled on
        ``executor``. Staging folders a killed process left behind are removed."""
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self._root, self._max_bytes, self._runtime = root, max_bytes, runtime
        self._executor, self._metrics, self._min = executor, metrics, min_graph_bytes
        self._key = compiled_key()
        self._lock = threading.Lock()
        self._pending: set[Path] = set()
        self._loads: dict[Path, int] = {}

    @property
    def root(self) -> Path:
        return self._root

    def folder(self, task: str, version: int, graph: Path) -> Path | None:
        """Where ``graph`` (task's stored version) compiled lives, compiled or not; None for a
        graph too small to compile."""
        stat = graph.stat()
        if stat.st_size < self._min:
            return None
        identity = f"{self._key}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return self._root / f"{task}@{version}-{digest}"

    def find(self, folder: Path) -> bool:
        """Whether ``folder`` holds a compiled head; a hit counts as a use (recency)."""
        if not (folder / COMPILED_GRAPH).is_file():
            self._metrics.head_compiled_lookups.labels("miss").inc()
            return False
        with contextlib.suppress(OSError):  # deleted meanwhile: the load falls back
            os.utime(folder)
        self._metrics.head_compiled_lookups.labels("hit").inc()
        return True

    def discard(self, folder: Path) -> None:
        """Delete a compiled head that would not load (it is compiled again next time)."""
        log.warning("deleting compiled head %s: it did not load", folder.name)
        shutil.rmtree(folder, ignore_errors=True)

    def compile_later(self, folder: Path, read: Callable[[], bytes]) -> None:
        """Count a load of the graph that ``folder`` would hold from the repository; from its
        ``COMPILE_AT_LOAD``-th, compile it (the graph ``read`` returns) on the background thread,
        unless it is queued or MAX_PENDING others are. A compilation costs a few loads
        (bench/cold_loads.py), so a head is compiled once it has been loaded again, not on its
        first load: under a long-tailed traffic most heads loaded once are not loaded again
        before their compiled form would have been deleted."""
        with self._lock:
            loads = self._loads.pop(folder, 0) + 1
            self._loads[folder] = loads  # most recent last
            while len(self._loads) > MAX_COUNTED:
                self._loads.pop(next(iter(self._loads)))
            if loads < COMPILE_AT_LOAD:
                return
            if folder in self._pending or len(self._pending) >= MAX_PENDING:
                return
            self._pending.add(folder)
        self._executor.submit(self._compile, folder, read)

    def _compile(self, folder: Path, read: Callable[[], bytes]) -> None:
        staging = self._root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            if (folder / COMPILED_GRAPH).is_file():
                return
            self._runtime.compile(read(), staging)
            try:
                staging.rename(folder)  # complete or absent, as readers see it
            except OSError:  # another process compiled it first
                return
            self._trim()
        except Exception:  # a cache: a head that does not compile loads as it is
            log.exception("could not compile %s", folder.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self._pending.discard(folder)

    def _trim(self) -> None:
        """Delete the least recently used compiled heads until the rest fit ``max_bytes``."""
        entries = []
        for folder in self._root.iterdir():
            if folder.name.startswith(STAGING_PREFIX):
                continue
            with contextlib.suppress(OSError):
                size = sum(f.stat().st_size for f in folder.iterdir())
                entries.append((folder.stat().st_mtime_ns, size, folder))
        total = sum(size for _, size, _ in entries)
        for _, size, folder in sorted(entries):
            if total <= self._max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
        self._metrics.head_compiled_bytes.set(total)
