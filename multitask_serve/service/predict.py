"""The one prediction entry point, which knows no HTTP: every wire format's routes call it.

``Predictor.predict`` checks the texts, resolves tasks against one registry snapshot, waits for
any of their heads not loaded to load (service/residency.py), submits the work to the
micro-batcher and counts it in the serving metrics; it also answers liveness and readiness (a real
probe inference queued through the batch worker). Each wire format's routes (service/routes.py,
oip.py, tei.py, openai_compat.py) shape its answers into their own format; none imports another.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from multitask_serve.modelrepo.types import TASK_NAME_RE
from multitask_serve.service.batcher import Batcher
from multitask_serve.service.engine import PROBE_TEXT, Engine
from multitask_serve.service.errors import InvalidInput, TooLarge, Unavailable
from multitask_serve.service.logs import note_tasks
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.registry import HeadRegistry
from multitask_serve.service.residency import LoadedHead, ServedHead
from multitask_serve.service.settings import Settings
from multitask_serve.service.tokenize import Token
from multitask_serve.service.types import JobResult


@dataclass(frozen=True)
class Readiness:
    heads: int  # how many heads are served
    ran: bool  # the probe ran; False: the worker is busy finishing batches (not stuck)


class Predictor:
    def __init__(
        self,
        registry: HeadRegistry,
        batcher: Batcher,
        metrics: Metrics,
        settings: Settings,
        probe_engine: Engine,
        draining: threading.Event,
    ) -> None:
        """``probe_engine`` runs readiness probes: the serving sessions, metrics of its own.

        ``draining`` is set when shutdown begins: readiness fails from then on while requests are
        still served.
        """
        self.registry, self.batcher, self.metrics = registry, batcher, metrics
        self.settings, self.probe_engine, self.draining = settings, probe_engine, draining

    def texts(self, inputs: str | list[str]) -> list[str]:
        """A request's texts, checked: at least one, at most ``max_batch_texts``, valid Unicode."""
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not texts:
            raise InvalidInput("inputs is an empty list; send a text or a list of texts")
        limit = self.settings.max_batch_texts
        if len(texts) > limit:
            raise TooLarge(f"{len(texts)} texts in one request; the limit is {limit}")
        for i, text in enumerate(texts):
            # JSON may escape lone UTF-16 surrogates ("\ud800"); they are not text, and the
            # tokenizer would fail on them inside a micro-batch that other requests share.
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInput(
                    f"inputs[{i}] is not valid Unicode ({exc.reason} at character {exc.start})"
                ) from None
        return texts

    def resolve(self, tasks: list[str]) -> dict[str, ServedHead]:
        """The served heads of ``tasks`` from one snapshot, loaded or not (raises UnknownTask)."""
        return self.registry.resolve(tasks)

    def tokens(self, texts: list[str]) -> list[list[Token]]:
        """Per text, the tokens the trunk reads: what a request costs, counted in tokens."""
        return self.probe_engine.tokens(texts)

    async def predict(
        self,
        inputs: str | list[str],
        tasks: Sequence[str] | Mapping[str, ServedHead],
        *,
        check_texts: Callable[[list[str]], None] | None = None,
        check_heads: Callable[[Mapping[str, ServedHead]], None] | None = None,
        truncate: bool | None = None,
    ) -> JobResult:
        """Every prediction route's one call: the request's texts, checked (``texts``, then a
        format's own ``check_texts``); the tasks' heads from one snapshot (``resolve``; or the
        heads a route resolved already, as OIP does to check the version its path names),
        checked by a format's own ``check_heads``, loaded if they are not; then ``run``.
        ``truncate``: cut texts longer than the served length instead of reading them in
        windows (None: the server's default, ``MTS_TRUNCATE``). The tasks asked for are named on
        the request's access line first, whatever the answer (those that cannot be task names
        are left out)."""
        note_tasks(task for task in tasks if TASK_NAME_RE.fullmatch(task))
        texts = self.texts(inputs)
        if check_texts is not None:
            check_texts(texts)
        served = tasks if isinstance(tasks, Mapping) else self.resolve(list(tasks))
        if check_heads is not None:
            check_heads(served)
        heads = await self.registry.residency.acquire(served)
        cut = self.settings.truncate if truncate is None else truncate
        return await self.run(heads, texts, whole=not cut)

    async def run(
        self, heads: Mapping[str, LoadedHead], texts: list[str], whole: bool = True
    ) -> JobResult:
        """Every prediction's path: the micro-batcher, then per-task metrics."""
        metrics = self.metrics
        started = time.perf_counter()
        try:
            with metrics.in_flight.track_inprogress():
                done = await self.batcher.submit(heads, texts, whole)
        except Exception:
            for task in heads:
                metrics.requests.labels(task, "error").inc()
            raise
        elapsed = time.perf_counter() - started
        long = sum(n > 1 for n in done.windows)
        for task, head in heads.items():
            metrics.request_seconds.observe(elapsed)
            metrics.requests.labels(task, "ok").inc()
            windows = metrics.text_windows.labels(head.spec.kind)
            for n in done.windows:
                windows.observe(n)
            if long:
                metrics.long_texts.labels(task).inc(long)
        return done

    def live(self) -> None:
        """Raises Unavailable once the batch worker has stopped: only a restart repairs that.

        A hung worker is readiness' concern, not this: a long batch must not restart the process.
        """
        failure = self.batcher.failure
        if failure is not None:
            raise Unavailable(failure)

    async def ready(self) -> Readiness:
        """Ready when the batch worker runs a probe inference (through a loaded head, or the
        trunk alone when none is), or is busy finishing batches.

        The probe queues like a request (``Batcher.check``), so a stopped or hung worker fails this
        within ``readiness_timeout_seconds``; probes are counted only in
        ``mts_readiness_probes_total``, never in the serving metrics. Raises Unavailable.
        """
        if self.draining.is_set():
            raise Unavailable("shutting down: finishing in-flight requests")
        heads = self.registry.snapshot()
        loaded = self.registry.residency.any_loaded()
        probe: Callable[[], object]
        if loaded is not None:
            probe = functools.partial(
                self.probe_engine.predict, {loaded.task: loaded}, [PROBE_TEXT]
            )
        else:
            probe = functools.partial(self.probe_engine.embed, [PROBE_TEXT])
        try:
            ran = await self.batcher.check(probe, self.settings.readiness_timeout_seconds)
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(f"probe inference failed: {exc}") from exc
        return Readiness(len(heads), ran)
