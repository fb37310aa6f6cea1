"""The set of served heads: the only code that changes it.

A new head is validated outside the lock (spec vs the loaded trunk, ONNX load, signature, one real
inference through trunk and head), persisted to the repository, and only then swapped in as a new
read-only mapping. Requests take one snapshot and never see a half-made change.

Every stored task is served; which served heads are loaded is ``residency``'s concern
(service/residency.py): within ``MTS_HEAD_MEMORY_MB`` (None: all of them, loaded at start), the
rest loaded when a request asks for them.

Shadow candidates sit beside it (service/shadow.py ``Shadows``): they change under the same
``lock``, promote through ``serve``, and hear of every change of a served head (``on_change``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from types import MappingProxyType
from typing import IO

from multitask_serve.modelrepo.archive import ArchiveError, unpack_head_file
from multitask_serve.modelrepo.graphs import external_data_locations
from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError, StoredHead
from multitask_serve.modelrepo.types import EXACT_INTEGER_PRODUCTS, HeadSpec, Kind, TrunkSpec
from multitask_serve.service.compiled import CompiledHeads
from multitask_serve.service.convergence import LOAD_ERRORS, converge, each_new, pointed
from multitask_serve.service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ServiceError,
    Unavailable,
    UnknownTask,
)
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.residency import (
    LoadedHead,
    Policy,
    Residency,
    ServedHead,
    head_bytes,
)
from multitask_serve.service.selection import EVERY_TASK, TaskSelector
from multitask_serve.service.sessions import CPU, GraphError, HeadSession, Runtime

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Listed:
    """A served head as a listing shows it: loaded now or not, pinned or not."""

    task: str
    head: ServedHead
    loaded: bool
    pinned: bool


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a listing; ``next`` names its last task while more match (pass it as
    ``after`` for the next page), else None."""

    heads: list[Listed]
    next: str | None


# Runs one real inference through trunk and head; raises InvalidInput if the head misbehaves.
Probe = Callable[[LoadedHead], None]
# Told (task, the head now served, or None: no longer served) each time a served head changes.
Listener = Callable[[str, ServedHead | None], None]


class HeadRegistry:
    def __init__(
        self,
        repo: ModelRepository,
        trunk: TrunkSpec,
        probe: Probe,
        metrics: Metrics,
        loads: Executor,
        runtime: Runtime = CPU,
        budget: int | None = None,
        pinned: Iterable[str] = (),
        policy: Policy | None = None,
        compiled: CompiledHeads | None = None,
        heap_trim: str = "resident",
        selector: TaskSelector = EVERY_TASK,
    ) -> None:
        """``loads`` runs on-demand loads; ``budget`` bounds the loaded heads' bytes (None: every
        head loaded); ``pinned`` tasks are loaded at start and never evicted; ``compiled``
        heads load again cheaper (service/compiled.py); only the tasks ``selector`` selects
        are served (service/selection.py)."""
        self.selector = selector
        self._compiled = compiled
        self._metrics = metrics
        self._repo = repo
        self._trunk = trunk
        self._probe = probe
        self._runtime = runtime
        # Held by every change of the served set, and of anything kept beside it (shadows).
        self.lock = threading.Lock()
        self._heads: Mapping[str, ServedHead] = MappingProxyType({})
        self._listeners: list[Listener] = []
        # Pinned by MTS_PINNED_TASKS: the admin API cannot unpin them.
        self._configured_pins = frozenset(pinned)
        self.residency = Residency(
            self.load_stored,
            loads,
            metrics,
            budget,
            pinned,
            policy,
            current=self._served_version,
            heap_trim=heap_trim,
        )
        metrics.heads_served.set_function(lambda: len(self._heads))

    @property
    def repo(self) -> ModelRepository:
        return self._repo

    def snapshot(self) -> Mapping[str, ServedHead]:
        """The served heads, loaded or not."""
        return self._heads

    def page(
        self,
        loaded: bool | None = None,
        kind: Kind | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> Page:
        """The served heads by task name from one snapshot: only those (not) ``loaded``, of the
        ``kind``, named after ``after``; at most ``limit`` of them. Every listing (the service's
        own, OIP's repository index, OpenAI's model list) pages through this one."""
        residency = self.residency
        pinned = residency.pinned
        listed: list[Listed] = []
        for task, head in sorted(self._heads.items()):
            if (after is not None and task <= after) or (
                kind is not None and head.spec.kind != kind
            ):
                continue
            is_loaded = residency.loaded(task, head.version) is not None
            if loaded is not None and is_loaded != loaded:
                continue
            if limit is not None and len(listed) == limit:
                return Page(listed, listed[-1].task)  # one more matches: the page ends before it
            listed.append(Listed(task, head, is_loaded, task in pinned))
        return Page(listed, None)

    def _served_version(self, task: str) -> int | None:
        head = self._heads.get(task)
        return None if head is None else head.version

    def on_change(self, listener: Listener) -> None:
        """Call ``listener`` (with ``lock`` held) each time a task's served head changes."""
        self._listeners.append(listener)

    def serve(self, changes: Mapping[str, ServedHead | None]) -> None:
        """Swap in a new snapshot with each task's head (None: the task is no longer served),
        then tell the listeners. A ``LoadedHead`` is held loaded too; a task whose loaded head
        is no longer the served one is unloaded. The caller holds ``lock``."""
        heads = {**self._heads}
        for task, head in changes.items():
            if head is None:
                heads.pop(task, None)
            else:
                heads[task] = head.served() if isinstance(head, LoadedHead) else head
        self._heads = MappingProxyType(heads)
        for task, head in changes.items():
            if isinstance(head, LoadedHead):
                self.residency.put(head)
            elif head is None or self.residency.loaded(task, head.version) is None:
                self.residency.drop(task)
            for listener in self._listeners:
                listener(task, head)

    def resolve(self, tasks: list[str]) -> dict[str, ServedHead]:
        """The served heads of ``tasks``, from one snapshot, loaded or not; UnknownTask names the
        first one not served."""
        heads = self._heads
        for task in tasks:
            if task not in heads:
                raise self.unknown(task)
        return {task: heads[task] for task in tasks}

    def check_selected(self, task: str) -> None:
        """Conflict unless this replica set serves ``task`` (MTS_TASKS): a head added here for a
        task it leaves out would be stored where it is never served."""
        if not self.selector(task):
            raise Conflict(
                f"task {task!r} is not one this replica set serves (MTS_TASKS={self.selector}): "
                "add it through a replica set whose MTS_TASKS selects it"
            )

    def unknown(self, task: str) -> UnknownTask:
        """The error for a task not served here, naming the selector when it leaves it out."""
        return UnknownTask(task, None if self.selector(task) else str(self.selector))

    def loaded(self, tasks: list[str]) -> dict[str, LoadedHead]:
        """``resolve``, then the loaded heads, loading those that are not (blocks; for threads
        that may wait, never the batch thread or the event loop)."""
        return self.residency.acquire_now(self.resolve(tasks))

    def load(
        self,
        spec: HeadSpec,
        model: bytes | Path,
        version: int = 0,
        probe: bool = True,
        size: int | None = None,
    ) -> LoadedHead:
        """Check a head against the trunk and build its session; touches no shared state.
        ``model``: the graph's bytes, or the folder of its compiled form (``size``: what the
        stored graph counts, ``head_bytes``). ``probe``: run one real inference through trunk and
        head (False: a stored version, probed before it was stored)."""
        started = time.perf_counter()
        try:
            head = self._load(spec, model, version, probe, started, size)
        except ServiceError:
            self._metrics.head_load_failures.labels(spec.task).inc()
            raise
        self._metrics.head_load_seconds.observe(head.load_seconds)
        return head

    def load_stored(self, served: ServedHead) -> LoadedHead:
        """Load a served head from the repository (what a request for an unloaded head waits
        on): checked against the trunk and its graph's signature, without the probe inference,
        which every stored version passed before it was stored (an upload, a shadow, the build)
        and which would add a trunk run to every cold load. UnknownTask if the version has been
        removed meanwhile; Unavailable if it cannot be loaded (its files broken)."""
        task, version = served.task, served.version
        try:
            stored = self._repo.read_head(task, version)
            head = self._load_compiled(stored, served)
            if head is None:
                model = stored.model_path.read_bytes()
                head = self.load(stored.spec, model, version, probe=False)
        except LOAD_ERRORS as exc:
            if version not in self._repo.versions(task):
                # Removed since the request resolved it (here, or on another replica that this
                # one has not polled yet): the task is gone, as a request a moment later finds.
                raise UnknownTask(task) from exc
            message = f"task {task!r} version {version} could not be loaded: {exc}"
            raise Unavailable(message) from exc
        return head

    def _load_compiled(self, stored: StoredHead, served: ServedHead) -> LoadedHead | None:
        """The head from this replica's compiled cache, if it is there; if not, it is compiled
        in the background for the next load, and None."""
        compiled = self._compiled
        folder = (
            None
            if compiled is None
            else compiled.folder(served.task, served.version, stored.model_path)
        )
        if compiled is None or folder is None:
            return None
        if compiled.find(folder):
            started = time.perf_counter()
            try:
                head = self._load(stored.spec, folder, served.version, False, started, served.size)
            except ServiceError:  # the cache's files damaged, not the head: the graph loads
                compiled.discard(folder)
            else:
                self._metrics.head_load_seconds.observe(head.load_seconds)
                return dataclasses.replace(head, mapped=True)
        compiled.compile_later(folder, stored.model_path.read_bytes)
        return None

    def _load(
        self,
        spec: HeadSpec,
        model: bytes | Path,
        version: int,
        probe: bool,
        started: float,
        size: int | None = None,
    ) -> LoadedHead:
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
        external = [] if isinstance(model, Path) else external_data_locations(model)
        if external:
            raise InvalidInput(
                f"head {spec.task!r} keeps tensor data outside its graph ({', '.join(external)}); "
                "a head must be one self-contained head.onnx"
            )
        try:
            session = HeadSession(model, spec.output_name, self._trunk.hidden_size, self._runtime)
        except GraphError as exc:
            raise InvalidInput(f"head {spec.task!r}: {exc}") from exc
        if size is None:
            assert isinstance(model, bytes)
            size = head_bytes(len(model))
        head = LoadedHead(spec, version, size, session)
        if probe:
            self._probe(head)
        head = dataclasses.replace(head, load_seconds=time.perf_counter() - started)
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
        """Serve every task's current version. Without a budget every head is loaded now, as
        is each pinned head with one; the rest load when asked for. A head that fails to load
        here is logged and not served; returns those tasks."""
        served: dict[str, ServedHead] = {}
        failed = []
        self._sync_pins()
        for task in self.selector.filter(self._repo.tasks()):
            try:
                served[task] = self.describe(task)
            except LOAD_ERRORS as exc:
                log.error("not serving task %s: %s", task, exc)
                failed.append(task)
        now = self._loaded_now(served)
        failed += [task for task in served if task not in now and self._loads_at_start(task)]
        with self.lock:
            self.serve({t: h for t, h in {**served, **now}.items() if t not in failed})
        return failed

    def _loads_at_start(self, task: str) -> bool:
        return self.residency.budget is None or task in self.residency.pinned

    def _loaded_now(self, served: Mapping[str, ServedHead]) -> dict[str, LoadedHead]:
        """The heads of ``served`` that are loaded at once: all without a budget, else pinned."""
        wanted = {t: h.version for t, h in served.items() if self._loads_at_start(t)}
        return self.load_versions(wanted, {}, "serving")

    def describe(self, task: str, version: int | None = None) -> ServedHead:
        """A stored head as served, without loading it: its spec and what it would cost."""
        stored = self._repo.read_head(task, version)
        return ServedHead(stored.spec, stored.version, head_bytes(stored.model_path.stat().st_size))

    def add(self, spec: HeadSpec, model: bytes, replace: bool = False) -> LoadedHead:
        """Validate, persist as a new version, then serve. Refusals change nothing."""
        self.check_selected(spec.task)
        if not replace and spec.task in self._heads:
            raise Conflict(f"task {spec.task!r} exists; pass replace=true to serve a new version")
        head = self.load(spec, model)
        with self.lock:
            if not replace and spec.task in self._heads:
                raise Conflict(f"task {spec.task!r} was added concurrently")
            version = self._repo.add_head(spec, model)
            head = dataclasses.replace(head, version=version)
            self.serve({spec.task: head})
        log.info(
            "serving %s version %d (%s, tap %d)", spec.task, version, spec.kind, spec.branch_layer
        )
        return head

    def pin(self, task: str, pinned: bool = True) -> ServedHead:
        """Pin a served task's head (loaded now, never evicted) or unpin it, on every replica:
        the pin is stored in the repository. A task pinned by MTS_PINNED_TASKS stays pinned."""
        with self.lock:
            head = self._heads.get(task)
            if head is None:
                raise self.unknown(task)
            if not pinned and task in self._configured_pins:
                raise Conflict(f"task {task!r} is pinned by MTS_PINNED_TASKS; unset it there")
            try:
                self._repo.set_pinned(task, pinned)
            except RepositoryError as exc:
                raise NotFound(f"unknown task {task!r}: {exc}") from exc
            self.residency.pin(task, pinned)
        if pinned:
            self.loaded([task])
        log.info("%s %s", "pinned" if pinned else "unpinned", task)
        return head

    def _sync_pins(self, tasks: Iterable[str] | None = None) -> list[str]:
        """Pin what the settings and the repository pin, unpin the rest (of ``tasks``; None:
        of every task); returns the tasks pinned now that were not."""
        held = self.residency.pinned
        if tasks is None:
            wanted = self._configured_pins | set(self.selector.filter(self._repo.pinned()))
        else:
            named = set(self.selector.filter(tasks))
            stored = self._repo.pinned(named)
            wanted = self._configured_pins | {t for t in held if t not in named} | stored
        for task in held - wanted:
            self.residency.pin(task, False)
        for task in wanted - held:
            self.residency.pin(task)
        return sorted(wanted - held)

    def remove(self, task: str) -> None:
        with self.lock:
            if task not in self._heads:
                raise self.unknown(task)
            try:
                self._repo.remove_task(task)
            except RepositoryError as exc:  # another replica removed it since our last poll
                self.serve({task: None})
                raise NotFound(f"unknown task {task!r}: {exc}") from exc
            self.serve({task: None})
        log.info("removed %s", task)

    def versions(self, task: str) -> tuple[int | None, list[StoredHead]]:
        """The current version and every stored one, oldest first."""
        if not self.selector(task):
            raise self.unknown(task)
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

    def sync(self, tasks: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
        """Converge on the repository, which other replicas may have changed.

        Serves each task whose current version differs from the one held here (a loaded one is
        loaded again first, validated like an upload; a broken one is logged and left as it was)
        and drops tasks that are gone. ``tasks``: only these may have changed (the watcher's
        scan, ``ModelRepository.changed_since``); None reads every task's pointer.
        Returns (changed, dropped) tasks.
        """
        if tasks is None:
            wanted = pointed(self.selector.filter(self._repo.tasks()), self._repo.current_version)
        else:  # the tasks not named stay as they are
            named = set(self.selector.filter(tasks))
            wanted = {t: h.version for t, h in self._heads.items() if t not in named}
            wanted |= pointed(sorted(named), self._repo.current_version)
        served = self._heads
        # A head loaded here is loaded again (validated like an upload) before it is swapped;
        # one not loaded is only described, and loads when asked for.
        reload = {t for t in wanted if self._reloads(t)}
        loaded: dict[str, ServedHead] = {
            **self.describe_versions({t: v for t, v in wanted.items() if t not in reload}, served),
            **self.load_versions({t: wanted[t] for t in reload}, served, "serving"),
        }
        with self.lock:
            # Only apply what nobody changed while we loaded; the next poll sees the rest.
            changes = converge(self._heads, served, wanted, loaded)
            self.serve(changes)
        for task in self._sync_pins(tasks):  # pinned on another replica: load it here too
            if task in self._heads:
                with contextlib.suppress(ServiceError):
                    self.loaded([task])
        for task, head in changes.items():
            if head is None:
                log.info("repository: %s was removed", task)
            else:
                log.info("repository: serving %s version %d", task, head.version)
        changed = [task for task, head in changes.items() if head is not None]
        return changed, [task for task, head in changes.items() if head is None]

    def _reloads(self, task: str) -> bool:
        """A changed head is loaded before it is served: without a budget, pinned, or loaded."""
        return self._loads_at_start(task) or self.residency.loaded(task) is not None

    def describe_versions(
        self, wanted: Mapping[str, int], held: Mapping[str, ServedHead]
    ) -> dict[str, ServedHead]:
        """``describe`` each wanted (task, version) not already held; failures are logged."""
        return each_new(wanted, held, self.describe, "serving")

    def load_versions(
        self, wanted: Mapping[str, int], held: Mapping[str, ServedHead], role: str
    ) -> dict[str, LoadedHead]:
        """Load each wanted (task, version) not already held; failures are logged, not raised."""
        return each_new(wanted, held, self._read_and_load, role)

    def _read_and_load(self, task: str, version: int) -> LoadedHead:
        stored = self._repo.read_head(task, version)
        return self.load(stored.spec, stored.model_path.read_bytes(), version)


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
