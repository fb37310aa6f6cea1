"""The set of served heads: the only code that changes it.

A new head is validated outside the lock (spec vs the loaded trunk, ONNX load, signature, one real
inference through trunk and head), persisted to the repository, and only then swapped in as a new
read-only mapping. Requests take one snapshot and never see a half-made change.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from multitask_serve.modelrepo.graphs import external_data_locations
from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError, StoredHead
from multitask_serve.modelrepo.types import HeadSpec, TrunkSpec
from multitask_serve.service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ServiceError,
    UnknownTask,
)
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.sessions import CPU, GraphError, HeadSession, Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedHead:
    spec: HeadSpec
    version: int
    session: HeadSession


# Runs one real inference through trunk and head; raises InvalidInput if the head misbehaves.
Probe = Callable[[LoadedHead], None]


class HeadRegistry:
    def __init__(
        self,
        repo: ModelRepository,
        trunk: TrunkSpec,
        probe: Probe,
        metrics: Metrics,
        runtime: Runtime = CPU,
    ) -> None:
        self._metrics = metrics
        self._repo = repo
        self._trunk = trunk
        self._probe = probe
        self._runtime = runtime
        self._lock = threading.Lock()
        self._heads: Mapping[str, LoadedHead] = MappingProxyType({})

    def snapshot(self) -> Mapping[str, LoadedHead]:
        return self._heads

    def resolve(self, tasks: list[str]) -> dict[str, LoadedHead]:
        """The heads of ``tasks``, from one snapshot; UnknownTask names the first one not served."""
        heads = self._heads
        for task in tasks:
            if task not in heads:
                raise UnknownTask(task)
        return {task: heads[task] for task in tasks}

    def load(self, spec: HeadSpec, model: bytes, version: int = 0) -> LoadedHead:
        """Check a head against the trunk and build its session; touches no shared state."""
        started = time.perf_counter()
        try:
            head = self._load(spec, model, version)
        except ServiceError:
            self._metrics.head_load_failures.labels(spec.task).inc()
            raise
        self._metrics.head_load_seconds.labels(spec.task).observe(time.perf_counter() - started)
        return head

    def _load(self, spec: HeadSpec, model: bytes, version: int) -> LoadedHead:
        if spec.trunk_fingerprint != self._trunk.fingerprint:
            raise Conflict(
                f"head {spec.task!r} was trained against trunk {spec.trunk_fingerprint[:12]}..., "
                f"this service runs trunk {self._trunk.fingerprint[:12]}..."
            )
        if spec.hidden_size != self._trunk.hidden_size:
            raise InvalidInput(
                f"head {spec.task!r} expects width {spec.hidden_size}, the trunk has "
                f"{self._trunk.hidden_size}"
            )
        if not 0 <= spec.branch_layer <= self._trunk.num_layers:
            raise InvalidInput(
                f"head {spec.task!r} branches at tap {spec.branch_layer}; the trunk has taps "
                f"0..{self._trunk.num_layers}"
            )
        external = external_data_locations(model)
        if external:
            raise InvalidInput(
                f"head {spec.task!r} keeps tensor data outside its graph ({', '.join(external)}); "
                "a head must be one self-contained head.onnx"
            )
        try:
            session = HeadSession(model, spec.output_name, self._trunk.hidden_size, self._runtime)
        except GraphError as exc:
            raise InvalidInput(f"head {spec.task!r}: {exc}") from exc
        head = LoadedHead(spec=spec, version=version, session=session)
        self._probe(head)
        return head

    def load_repository(self) -> list[str]:
        """Serve every task's current version; a broken one is logged and skipped, not fatal."""
        loaded: dict[str, LoadedHead] = {}
        failed = []
        for task in self._repo.tasks():
            try:
                stored = self._repo.read_head(task)
                loaded[task] = self.load(
                    stored.spec, stored.model_path.read_bytes(), stored.version
                )
            except (RepositoryError, InvalidInput, Conflict, OSError) as exc:
                log.error("not serving task %s: %s", task, exc)
                failed.append(task)
        with self._lock:
            self._heads = MappingProxyType(loaded)
        return failed

    def add(self, spec: HeadSpec, model: bytes, replace: bool = False) -> LoadedHead:
        """Validate, persist as a new version, then serve. Refusals change nothing."""
        if not replace and spec.task in self._heads:
            raise Conflict(f"task {spec.task!r} exists; pass replace=true to serve a new version")
        head = self.load(spec, model)
        with self._lock:
            if not replace and spec.task in self._heads:
                raise Conflict(f"task {spec.task!r} was added concurrently")
            version = self._repo.add_head(spec, model)
            head = LoadedHead(spec=spec, version=version, session=head.session)
            self._heads = MappingProxyType({**self._heads, spec.task: head})
        log.info(
            "serving %s version %d (%s, tap %d)", spec.task, version, spec.kind, spec.branch_layer
        )
        return head

    def remove(self, task: str) -> None:
        with self._lock:
            if task not in self._heads:
                raise NotFound(f"unknown task {task!r}")
            try:
                self._repo.remove_task(task)
            except RepositoryError as exc:  # another replica removed it since our last poll
                self._heads = MappingProxyType({k: v for k, v in self._heads.items() if k != task})
                raise NotFound(f"unknown task {task!r}: {exc}") from exc
            self._heads = MappingProxyType({k: v for k, v in self._heads.items() if k != task})
        log.info("removed %s", task)

    def versions(self, task: str) -> tuple[int | None, list[StoredHead]]:
        """The current version and every stored one, oldest first."""
        try:
            stored = [self._repo.read_head(task, v) for v in self._repo.versions(task)]
            current = self._repo.current_version(task)
        except RepositoryError as exc:
            raise NotFound(str(exc)) from exc
        if not stored:
            raise NotFound(f"unknown task {task!r}")
        return current, stored

    def rollback(self, task: str, version: int | None = None) -> LoadedHead:
        """Serve a stored version again (default: the newest one older than the current)."""
        current, stored = self.versions(task)
        numbers = [s.version for s in stored]
        if version is None:
            older = [v for v in numbers if current is not None and v < current]
            if not older:
                raise Conflict(f"task {task!r} has no version older than {current}")
            version = older[-1]
        if version not in numbers:
            raise NotFound(f"task {task!r} has no version {version} (has {numbers})")
        target = stored[numbers.index(version)]
        head = self.load(target.spec, target.model_path.read_bytes(), version)
        with self._lock:
            self._repo.set_current(task, version)
            self._heads = MappingProxyType({**self._heads, task: head})
        log.info("rolled %s back to version %d", task, version)
        return head

    def sync(self) -> tuple[list[str], list[str]]:
        """Converge on the repository, which other replicas may have changed.

        Loads each task whose current version differs from the served one (validated like an
        upload; a broken one is logged and left as it was) and drops tasks that are gone.
        Returns (changed, dropped) tasks.
        """
        wanted: dict[str, int] = {}
        for task in self._repo.tasks():
            with contextlib.suppress(RepositoryError):
                version = self._repo.current_version(task)
                if version is not None:
                    wanted[task] = version
        served = self._heads
        loaded: dict[str, LoadedHead] = {}
        for task, version in wanted.items():
            if task in served and served[task].version == version:
                continue
            try:
                stored = self._repo.read_head(task, version)
                loaded[task] = self.load(stored.spec, stored.model_path.read_bytes(), version)
            except (RepositoryError, InvalidInput, Conflict, OSError) as exc:
                log.error("not serving %s version %d from the repository: %s", task, version, exc)
        with self._lock:
            # Only apply what nobody changed while we loaded; the next poll sees the rest.
            heads = dict(self._heads)
            changed = [t for t, h in loaded.items() if heads.get(t) is served.get(t)]
            dropped = [t for t in heads if t not in wanted and heads[t] is served.get(t)]
            for task in changed:
                heads[task] = loaded[task]
            for task in dropped:
                del heads[task]
            self._heads = MappingProxyType(heads)
        for task in changed:
            log.info("repository: serving %s version %d", task, heads[task].version)
        for task in dropped:
            log.info("repository: %s was removed", task)
        return changed, dropped
