"""The set of served heads: the only code that changes it.

A new head is validated outside the lock (spec vs the loaded trunk, ONNX load, signature, one real
inference through trunk and head), persisted to the repository, and only then swapped in as a new
read-only mapping. Requests take one snapshot and never see a half-made change.

Shadow candidates sit beside it (service/shadow.py ``Shadows``): they change under the same
``lock``, promote through ``serve``, and hear of every change of a served head (``on_change``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import IO

from multitask_serve.modelrepo.archive import ArchiveError, unpack_head_file
from multitask_serve.modelrepo.graphs import external_data_locations
from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError, StoredHead
from multitask_serve.modelrepo.types import EXACT_INTEGER_PRODUCTS, HeadSpec, TrunkSpec
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
    # When this process loaded it (epoch seconds): where a shadow's report starts.
    loaded_at: float = field(default_factory=time.time, compare=False)


# Runs one real inference through trunk and head; raises InvalidInput if the head misbehaves.
Probe = Callable[[LoadedHead], None]
# Told (task, the head now served, or None: no longer served) each time a served head changes.
Listener = Callable[[str, LoadedHead | None], None]


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
        # Held by every change of the served set, and of anything kept beside it (shadows).
        self.lock = threading.Lock()
        self._heads: Mapping[str, LoadedHead] = MappingProxyType({})
        self._listeners: list[Listener] = []

    @property
    def repo(self) -> ModelRepository:
        return self._repo

    def snapshot(self) -> Mapping[str, LoadedHead]:
        return self._heads

    def on_change(self, listener: Listener) -> None:
        """Call ``listener`` (with ``lock`` held) each time a task's served head changes."""
        self._listeners.append(listener)

    def serve(self, changes: Mapping[str, LoadedHead | None]) -> None:
        """Swap in a new snapshot with each task's head (None: the task is no longer served),
        then tell the listeners. The caller holds ``lock``."""
        heads = {**self._heads, **changes}
        self._heads = MappingProxyType({t: h for t, h in heads.items() if h is not None})
        for task, head in changes.items():
            for listener in self._listeners:
                listener(task, head)

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
        quantization = spec.training.get("quantization")
        method = quantization.get("method") if isinstance(quantization, dict) else None
        if spec.precision == "int8" and EXACT_INTEGER_PRODUCTS not in str(method):
            log.warning(
                "head %r is an int8 copy made by %r: its integer products saturate on x86 CPUs "
                "without VNNI, where its answers are wrong; quantize its fp32 version again "
                "(mts quantize --head)",
                spec.task,
                method,
            )
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
        with self.lock:
            self.serve(loaded)
        return failed

    def add(self, spec: HeadSpec, model: bytes, replace: bool = False) -> LoadedHead:
        """Validate, persist as a new version, then serve. Refusals change nothing."""
        if not replace and spec.task in self._heads:
            raise Conflict(f"task {spec.task!r} exists; pass replace=true to serve a new version")
        head = self.load(spec, model)
        with self.lock:
            if not replace and spec.task in self._heads:
                raise Conflict(f"task {spec.task!r} was added concurrently")
            version = self._repo.add_head(spec, model)
            head = LoadedHead(spec=spec, version=version, session=head.session)
            self.serve({spec.task: head})
        log.info(
            "serving %s version %d (%s, tap %d)", spec.task, version, spec.kind, spec.branch_layer
        )
        return head

    def remove(self, task: str) -> None:
        with self.lock:
            if task not in self._heads:
                raise NotFound(f"unknown task {task!r}")
            try:
                self._repo.remove_task(task)
            except RepositoryError as exc:  # another replica removed it since our last poll
                self.serve({task: None})
                raise NotFound(f"unknown task {task!r}: {exc}") from exc
            self.serve({task: None})
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
        with self.lock:
            self._repo.set_current(task, version)
            self.serve({task: head})
        log.info("rolled %s back to version %d", task, version)
        return head

    def sync(self) -> tuple[list[str], list[str]]:
        """Converge on the repository, which other replicas may have changed.

        Loads each task whose current version differs from the one held here (validated like an
        upload; a broken one is logged and left as it was) and drops tasks that are gone.
        Returns (changed, dropped) tasks.
        """
        wanted = pointed(self._repo.tasks(), self._repo.current_version)
        served = self._heads
        loaded = self.load_versions(wanted, served, "serving")
        with self.lock:
            # Only apply what nobody changed while we loaded; the next poll sees the rest.
            changes = converge(self._heads, served, wanted, loaded)
            self.serve(changes)
        for task, head in changes.items():
            if head is None:
                log.info("repository: %s was removed", task)
            else:
                log.info("repository: serving %s version %d", task, head.version)
        changed = [task for task, head in changes.items() if head is not None]
        return changed, [task for task, head in changes.items() if head is None]

    def load_versions(
        self, wanted: Mapping[str, int], held: Mapping[str, LoadedHead], role: str
    ) -> dict[str, LoadedHead]:
        """Load each wanted (task, version) not already held; failures are logged, not raised."""
        loaded: dict[str, LoadedHead] = {}
        for task, version in wanted.items():
            if task in held and held[task].version == version:
                continue
            try:
                stored = self._repo.read_head(task, version)
                loaded[task] = self.load(stored.spec, stored.model_path.read_bytes(), version)
            except (RepositoryError, InvalidInput, Conflict, OSError) as exc:
                log.error("not %s %s version %d from the repository: %s", role, task, version, exc)
        return loaded


def pointed(tasks: Iterable[str], pointer: Callable[[str], int | None]) -> dict[str, int]:
    """Task -> the version its ``pointer`` names in the repository, for the tasks that have one
    (a task removed meanwhile has none)."""
    wanted = {}
    for task in tasks:
        with contextlib.suppress(RepositoryError):
            version = pointer(task)
            if version is not None:
                wanted[task] = version
    return wanted


def converge(
    now: Mapping[str, LoadedHead],
    seen: Mapping[str, LoadedHead],
    wanted: Mapping[str, int],
    loaded: Mapping[str, LoadedHead],
) -> dict[str, LoadedHead | None]:
    """The changes that bring ``now`` to ``wanted``: ``loaded`` heads swapped in, unwanted tasks
    dropped (None), for the tasks whose head is still the one ``seen`` before loading (a change
    made meanwhile wins)."""
    changes: dict[str, LoadedHead | None] = {
        t: head for t, head in loaded.items() if now.get(t) is seen.get(t)
    }
    changes.update({t: None for t in now if t not in wanted and now[t] is seen.get(t)})
    return changes


def register_archive(
    file: IO[bytes], task: str, max_bytes: int, register: Callable[[HeadSpec, bytes], LoadedHead]
) -> LoadedHead:
    """Unpack a head archive meant for ``task`` and ``register`` it (``HeadRegistry.add`` or
    ``Shadows.add``, which validate it against the trunk): what the admin API does with an upload
    and the first run with each head it trained. A bad archive, or one for another task, is
    InvalidInput."""
    try:
        spec, model = unpack_head_file(file, max_bytes)
    except ArchiveError as exc:
        raise InvalidInput(f"head archive refused: {exc}") from exc
    if spec.task != task:
        raise InvalidInput(f"the archive is a head for {spec.task!r}, not {task!r}")
    return register(spec, model)
