"""The inference engine, which knows nothing of HTTP: tokenize -> trunk once -> each head.

One trunk run serves every task of a call: the trunk is asked only for the taps the requested
heads read, and each head runs on its tap. Zero-shot heads are created here too, by embedding label
descriptions with the same frozen trunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from service.errors import InvalidInput, NotFound
from service.metrics import Metrics
from service.postprocess import decode
from service.registry import HeadRegistry, LoadedHead
from service.sessions import CPU, HeadSession, RowPicker, Runtime, Tap, TrunkSession
from service.tokenize import TextEncoder
from service.types import Job, JobResult, Output, TaskResult, TokenizedBatch
from spec import graphs
from spec.types import HeadSpec, Kind, TrunkSpec, tap_name

PROBE_TEXT = "The quick brown fox jumps over the lazy dog."


class Engine:
    def __init__(
        self,
        trunk_spec: TrunkSpec,
        trunk: TrunkSession,
        encoder: TextEncoder,
        metrics: Metrics,
        runtime: Runtime = CPU,
    ) -> None:
        self.trunk_spec = trunk_spec
        self._trunk = trunk
        self._encoder = encoder
        self._metrics = metrics
        self._pooling = HeadSession(
            graphs.embedding_graph(trunk_spec.hidden_size),
            "embedding",
            trunk_spec.hidden_size,
            runtime,
        )
        self._rows = RowPicker(trunk_spec.hidden_size, runtime)
        self.registry: HeadRegistry | None = None

    def attach(self, registry: HeadRegistry) -> None:
        self.registry = registry

    def _run_trunk(self, texts: list[str], taps: set[int]) -> tuple[TokenizedBatch, dict[int, Tap]]:
        t0 = time.perf_counter()
        batch = self._encoder.encode(texts)
        t1 = time.perf_counter()
        names = sorted(taps)
        out = self._trunk.run(batch.feeds, [tap_name(i) for i in names])
        t2 = time.perf_counter()
        self._metrics.stage_seconds.labels("tokenize").observe(t1 - t0)
        self._metrics.stage_seconds.labels("trunk").observe(t2 - t1)
        self._metrics.trunk_runs.inc()
        return batch, {i: out[tap_name(i)] for i in names}

    def resolve(self, tasks: list[str]) -> dict[str, LoadedHead]:
        assert self.registry is not None
        heads = self.registry.snapshot()
        missing = [t for t in tasks if t not in heads]
        if missing:
            raise NotFound(f"unknown task {missing[0]!r}; GET /tasks lists the served ones")
        return {t: heads[t] for t in tasks}

    def predict(
        self, heads: Mapping[str, LoadedHead], texts: list[str]
    ) -> tuple[dict[str, TaskResult], list[bool]]:
        """Every head on the same texts with one trunk run. Returns results and truncation flags."""
        done = self.predict_many([Job(heads, texts)])[0]
        return done.results, done.truncated

    def predict_many(self, jobs: list[Job]) -> list[JobResult]:
        """Several requests, any tasks, one trunk run; each head runs on the rows that asked."""
        texts = [text for job in jobs for text in job.texts]
        spans, start = [], 0
        for job in jobs:
            spans.append(range(start, start + len(job.texts)))
            start += len(job.texts)
        users: dict[int, tuple[LoadedHead, list[int]]] = {}  # by head object: versions may differ
        for job, span in zip(jobs, spans, strict=True):
            for head in job.heads.values():
                users.setdefault(id(head), (head, []))[1].extend(span)
        batch, taps = self._run_trunk(texts, {h.spec.branch_layer for h, _ in users.values()})
        self._metrics.batch_texts.observe(len(texts))
        self._metrics.batch_tokens.observe(int(batch.attention_mask.sum()))
        decoded: dict[int, dict[int, Output]] = {}
        for key, (head, rows) in users.items():
            t0 = time.perf_counter()
            whole = len(rows) == len(texts)
            sub = batch if whole else batch.rows(rows)
            hidden = taps[head.spec.branch_layer]
            raw = head.session.run(
                hidden if whole else self._rows.take(hidden, rows), sub.attention_mask
            )
            outputs = decode(head.spec, raw, sub, [texts[i] for i in rows])
            decoded[key] = dict(zip(rows, outputs, strict=True))
            self._metrics.head_seconds.labels(head.spec.task).observe(time.perf_counter() - t0)
        return [
            JobResult(
                results={
                    task: TaskResult(
                        task,
                        head.version,
                        str(head.spec.kind),
                        [decoded[id(head)][i] for i in span],
                    )
                    for task, head in job.heads.items()
                },
                truncated=[batch.truncated[i] for i in span],
            )
            for job, span in zip(jobs, spans, strict=True)
        ]

    def probe(self, head: LoadedHead) -> None:
        """One real inference through trunk and head; the output must fit the head's spec."""
        batch, taps = self._run_trunk([PROBE_TEXT, "ok"], {head.spec.branch_layer})
        try:
            raw = head.session.run(taps[head.spec.branch_layer], batch.attention_mask)
        except Exception as exc:  # ORT raises several unrelated types at run time
            raise InvalidInput(f"head {head.spec.task!r} fails on a probe text: {exc}") from exc
        spec = head.spec
        expected: tuple[int, ...]
        if spec.kind is Kind.EMBEDDING:
            expected = (batch.size, spec.hidden_size)
        elif spec.kind is Kind.TOKEN_CLASSIFICATION:
            expected = (batch.size, batch.attention_mask.shape[1], len(spec.labels))
        else:
            expected = (batch.size, len(spec.labels))
        if raw.shape != expected or raw.dtype != np.float32:
            raise InvalidInput(
                f"head {spec.task!r} returns {raw.dtype}{list(raw.shape)} on a probe batch; its "
                f"head.json implies float32{list(expected)}"
            )
        if not np.all(np.isfinite(raw)):
            raise InvalidInput(f"head {spec.task!r} returns non-finite values on a probe text")

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length sentence embeddings from the last tap (the embedding head's computation)."""
        last = self.trunk_spec.num_layers
        batch, taps = self._run_trunk(texts, {last})
        return self._pooling.run(taps[last], batch.attention_mask)

    def zero_shot_head(self, task: str, descriptions: Mapping[str, str]) -> tuple[HeadSpec, bytes]:
        labels = list(descriptions)
        model = graphs.zero_shot_graph(self.embed([descriptions[label] for label in labels]))
        spec = HeadSpec(
            task=task,
            kind=Kind.ZERO_SHOT,
            branch_layer=self.trunk_spec.num_layers,
            hidden_size=self.trunk_spec.hidden_size,
            trunk_fingerprint=self.trunk_spec.fingerprint,
            labels=tuple(labels),
            training={"strategy": "frozen", "label_descriptions": dict(descriptions)},
        )
        return spec, model
