"""The inference engine, which knows nothing of HTTP: tokenize -> trunk once -> each head.

One trunk run serves every task of a call: the trunk is asked only for the taps the requested
heads read, and each head runs on its tap. Zero-shot heads are created here too, by embedding label
descriptions with the same frozen trunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from multitask_serve.modelrepo import graphs
from multitask_serve.modelrepo.types import KINDS, HeadSpec, Kind, TrunkSpec
from multitask_serve.service.errors import InvalidInput, TooLarge
from multitask_serve.service.memory import TRIM_AFTER_BYTES, ActivationModel, MemoryBudget
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.outputs import WindowedText, decode, pool
from multitask_serve.service.residency import LoadedHead
from multitask_serve.service.sessions import (
    CPU,
    HeadSession,
    RowPicker,
    Runtime,
    Tap,
    release_freed_memory,
)
from multitask_serve.service.shadow import ShadowWork
from multitask_serve.service.tokenize import Encoded, TextEncoder, Token
from multitask_serve.service.tracing import batch as traced_batch
from multitask_serve.service.trunk import TrunkSession
from multitask_serve.service.types import Job, JobResult, Output, TaskResult, TokenizedBatch
from multitask_serve.service.windows import windows

PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
# The fixed cost of one trunk run with its heads, in tokens' worth of work, per device: what
# splitting a micro-batch into more, less padded runs must save to pay. On a GPU a run's fixed
# cost dwarfs padding, so batches stay whole. Measured by bench/length_groups.py.
GROUP_COST_TOKENS = {"cpu": 32, "cuda": 1 << 20}


def default_group_cost(runtime: Runtime) -> int:
    return GROUP_COST_TOKENS[runtime.device]


def length_groups(lengths: np.ndarray, call_cost: int) -> list[list[int]]:
    """Rows cut into groups, each padded to its own longest, at the least total cost.

    Cost = padded tokens + ``call_cost`` per group; the best cut of the rows sorted by length is
    found by dynamic programming over where each group starts. The contract with the assembly in
    ``Engine.predict_many``: every row is in exactly one group, and each group lists its rows in
    ascending order, which is the order its sub-batch (``TokenizedBatch.group``) holds them in.
    """
    n = len(lengths)
    if n <= 1 or n * int(lengths.max()) - int(lengths.sum()) <= call_cost:
        return [list(range(n))]
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order].tolist()
    best = [0.0] + [math.inf] * n  # least cost of the first j rows
    cut = [0] * (n + 1)  # where the last group of that best cost starts
    for j in range(1, n + 1):
        longest = sorted_lengths[j - 1]
        for i in range(j):
            cost = best[i] + (j - i) * longest + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(order[cut[j] : j].tolist()))
        j = cut[j]
    return groups[::-1]


def _positions(held: list[int], rows: list[int]) -> list[int]:
    """Where each of ``rows`` sits in a tap that holds the rows ``held``."""
    at = {row: i for i, row in enumerate(held)}
    return [at[row] for row in rows]


@dataclass(frozen=True)
class Reader:
    """A head of a batch and the batch's rows that asked for it."""

    head: LoadedHead
    rows: list[int]


@dataclass(frozen=True)
class Plan:
    """What a batch will run: its texts, tokenized once into rows (a text longer than the served
    length read whole takes a row per window), and who reads which rows."""

    texts: list[str]
    spans: list[range]  # per job, its texts
    rows: list[range]  # per text, its rows
    text_of: list[int]  # per row, its text
    users: dict[int, Reader]  # by id of the head object
    candidates: dict[int, LoadedHead]  # the same keys: the head's shadow candidate, if any
    batch: TokenizedBatch
    lengths: np.ndarray  # per row, its tokens
    runs: list[list[int]]  # the trunk runs, each its rows in ascending order
    largest: int  # the planned bytes of the largest run

    def windowed(self, row: int) -> bool:
        """Whether ``row`` is one window of a text read in several."""
        return len(self.rows[self.text_of[row]]) > 1


@dataclass(frozen=True)
class TrunkRun:
    """One trunk run of a plan: its rows, their sub-batch and the taps asked for."""

    rows: list[int]
    batch: TokenizedBatch
    position: dict[int, int]  # row -> where the sub-batch holds it
    members: dict[int, list[int]]  # head key -> its rows in this run
    taps: dict[int, tuple[Tap, list[int]]]  # per tap: the hidden state and the rows it holds


@dataclass(frozen=True)
class Answered:
    """One head's results on its rows of a trunk run that are whole texts, and its raw outputs on
    the rows that are windows of longer texts (decoded once every window has run)."""

    rows: list[int]
    local: list[int]  # where the run's sub-batch holds those rows
    batch: TokenizedBatch  # those rows
    texts: list[str]
    outputs: list[Output]
    seconds: float  # the head's time on them, decoding included
    pieces: dict[int, np.ndarray]  # window rows -> the head's output on each


def _shadow_work(
    run: TrunkRun, served: LoadedHead, candidate: LoadedHead, answered: Answered
) -> ShadowWork:
    """What ``candidate`` needs to run later on the rows ``served`` answered: its own tap, which
    the same trunk run yielded."""
    tap, held = run.taps[candidate.spec.branch_layer]
    picks = None if answered.local == held else _positions(held, answered.local)
    return ShadowWork(
        served,
        candidate,
        tap,
        picks,
        answered.batch,
        answered.texts,
        answered.outputs,
        answered.seconds,
    )


def _assemble(
    jobs: list[Job], plan: Plan, decoded: Mapping[int, Mapping[int, Output]]
) -> list[JobResult]:
    """Each job's answers in its own order, from the results of every head by text."""
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
            truncated=[plan.batch.truncated[plan.rows[i][0]] for i in span],
            tokens=[int(plan.lengths[plan.rows[i]].sum()) for i in span],
            windows=[len(plan.rows[i]) for i in span],
        )
        for job, span in zip(jobs, plan.spans, strict=True)
    ]


class Engine:
    def __init__(
        self,
        trunk_spec: TrunkSpec,
        trunk: TrunkSession,
        encoder: TextEncoder,
        metrics: Metrics,
        runtime: Runtime = CPU,
        group_cost: int | None = None,
        budget: MemoryBudget | None = None,
        max_windows: int = 0,
    ) -> None:
        """``budget``: the memory runs must fit in (None: unbounded, every group runs whole).
        ``max_windows``: windows a text read whole may take; a job with a longer text is refused
        (TooLarge; 0: no limit)."""
        self.max_windows = max_windows
        self.trunk_spec = trunk_spec
        self._trunk = trunk
        self._encoder = encoder
        self._metrics = metrics
        self._pooling = HeadSession(
            graphs.embedding_graph(trunk_spec.hidden_size),
            KINDS[Kind.EMBEDDING].output,
            trunk_spec.hidden_size,
            runtime,
        )
        self._rows = RowPicker(trunk_spec.hidden_size, runtime)
        self._group_cost = default_group_cost(runtime) if group_cost is None else group_cost
        self.budget = budget or MemoryBudget(None, ActivationModel(trunk_spec.hidden_size))

    def _encode(self, texts: list[str], whole: list[bool] | bool = False) -> Encoded:
        t0 = time.perf_counter()
        encoded = self._encoder.encode(texts, whole)
        t1 = time.perf_counter()
        self._metrics.stage_seconds.labels("tokenize").observe(t1 - t0)
        if (traced := traced_batch.get()) is not None:
            traced.tokenize(t0, t1, len(texts), encoded.batch.size)
        return encoded

    def _trunk_taps(
        self, batch: TokenizedBatch, needs: dict[int, set[int]]
    ) -> dict[int, tuple[Tap, list[int]]]:
        """Per tap, its hidden state and the rows it holds (``TrunkSession.run_rows``)."""
        t0 = time.perf_counter()
        out = self._trunk.run_rows(batch.feeds, needs)
        t1 = time.perf_counter()
        self._metrics.stage_seconds.labels("trunk").observe(t1 - t0)
        self._metrics.trunk_runs.inc()
        if (traced := traced_batch.get()) is not None:
            traced.trunk(t0, t1, batch.size, batch.attention_mask.shape[1], needs)
        return out

    def _run_trunk(self, texts: list[str], taps: set[int]) -> tuple[TokenizedBatch, dict[int, Tap]]:
        """Every text, cut at the served length, at these taps."""
        batch = self._encode(texts).batch
        every = set(range(batch.size))
        out = self._trunk_taps(batch, dict.fromkeys(taps, every))
        return batch, {tap: hidden for tap, (hidden, _) in out.items()}

    def predict(
        self, heads: Mapping[str, LoadedHead], texts: list[str]
    ) -> tuple[dict[str, TaskResult], list[bool]]:
        """Every head on the same texts with one trunk run. Returns results and truncation flags."""
        done = self.predict_many([Job(heads, texts)])[0]
        return done.results, done.truncated

    def predict_many(self, jobs: list[Job]) -> list[JobResult]:
        """Several requests, any tasks, one tokenization; each head runs on the rows that asked."""
        return self.predict_shadowed(jobs, {})[0]

    def predict_shadowed(
        self, jobs: list[Job], shadows: Mapping[str, LoadedHead]
    ) -> tuple[list[JobResult], list[ShadowWork]]:
        """``predict_many``, and for each task with a candidate in ``shadows``, the work its
        candidate needs to run later on the same rows (``run_shadow``): each trunk run also yields
        the candidate's tap, so the shadow costs no trunk run of its own.

        Plan (``_plan``: one tokenization, who reads which rows, length groups cut to the memory
        budget), then per run: the trunk (``_run_trunk_rows``), each head on its rows
        (``_run_head``) and its candidate's work (``_shadow_work``); last, the answers
        (``_assemble``).
        """
        plan = self._plan(jobs, shadows)
        decoded: dict[int, dict[int, Output]] = {key: {} for key in plan.users}
        pieces: dict[int, dict[int, np.ndarray]] = {key: {} for key in plan.users}
        works: list[ShadowWork] = []
        for rows in plan.runs:
            run = self._run_trunk_rows(plan, rows)
            for key, wanted in run.members.items():
                head, candidate = plan.users[key].head, plan.candidates.get(key)
                answered = self._run_head(plan, run, head, wanted)
                texts = [plan.text_of[row] for row in answered.rows]
                decoded[key].update(zip(texts, answered.outputs, strict=True))
                pieces[key].update(answered.pieces)
                if candidate is not None and answered.rows:
                    works.append(_shadow_work(run, head, candidate, answered))
        for key, held in pieces.items():
            if held:
                decoded[key].update(self._pool(plan, plan.users[key].head, held))
        if (
            plan.largest > TRIM_AFTER_BYTES
        ):  # a rare large run: its freed activations back to the OS
            release_freed_memory()
        return _assemble(jobs, plan, decoded), works

    def _plan(self, jobs: list[Job], shadows: Mapping[str, LoadedHead]) -> Plan:
        """Tokenize every job's texts at once, each text into its rows (``TextEncoder.encode``;
        refused past ``max_windows``, ``_check_windows``); note which rows each head (and its
        candidate) reads; cut the rows into length groups (``length_groups``), each padded only
        to its own longest row, and those into runs that fit the memory budget (``_fitted``)."""
        texts = [text for job in jobs for text in job.texts]
        spans, start = [], 0
        for job in jobs:
            spans.append(range(start, start + len(job.texts)))
            start += len(job.texts)
        encoded = self._encode(texts, [job.whole for job in jobs for _ in job.texts])
        self._check_windows(jobs, spans, encoded)
        text_of = [text for text, rows in enumerate(encoded.rows) for _ in rows]
        users: dict[int, Reader] = {}  # by head object: versions may differ
        for job, span in zip(jobs, spans, strict=True):
            rows = [row for text in span for row in encoded.rows[text]]
            for head in job.heads.values():
                users.setdefault(id(head), Reader(head, [])).rows.extend(rows)
        candidates = {
            key: shadows[reader.head.spec.task]
            for key, reader in users.items()
            if shadows.get(reader.head.spec.task, reader.head) is not reader.head
        }
        batch = encoded.batch
        self._metrics.batch_texts.observe(len(texts))
        self._metrics.batch_tokens.observe(int(batch.attention_mask.sum()))
        lengths = batch.attention_mask.sum(axis=1)
        runs, largest = self._fitted(length_groups(lengths, self._group_cost), lengths)
        return Plan(
            texts, spans, encoded.rows, text_of, users, candidates, batch, lengths, runs, largest
        )

    def _check_windows(self, jobs: list[Job], spans: list[range], encoded: Encoded) -> None:
        """TooLarge for the first text past ``max_windows`` (the batcher then runs each job alone,
        so only its own request gets the error)."""
        if not self.max_windows:
            return
        for job, span in zip(jobs, spans, strict=True):
            for index, text in enumerate(span):
                taken = len(encoded.rows[text])
                if taken > self.max_windows:
                    raise TooLarge(
                        f"inputs[{job.first + index}] needs {taken} windows of "
                        f"{self._encoder.max_length} tokens; the limit is {self.max_windows} "
                        "(MTS_MAX_WINDOWS): send it in parts, or with truncate to cut it"
                    )

    def _pool(
        self, plan: Plan, head: LoadedHead, pieces: Mapping[int, np.ndarray]
    ) -> dict[int, Output]:
        """One answer per text read in windows, from the head's output on each of its rows."""
        out = {}
        capacity, overlap = self._encoder.capacity, self._encoder.overlap
        for text in sorted({plan.text_of[row] for row in pieces}):
            rows = plan.rows[text]
            encodings = [plan.batch.encodings[row] for row in rows]
            raws = [pieces[row] for row in rows]
            if head.spec.traits.per_token:  # the row's own tokens, not its run's padding
                raws = [raw[: len(e.ids)] for raw, e in zip(raws, encodings, strict=True)]
            last = len(encodings[-1].ids) - self._encoder.specials
            layout = windows((len(rows) - 1) * (capacity - overlap) + last, capacity, overlap)
            windowed = WindowedText(plan.texts[text], raws, encodings, layout)
            out[text] = pool(head.spec, windowed)
        return out

    def _run_trunk_rows(self, plan: Plan, rows: list[int]) -> TrunkRun:
        """One trunk run over ``rows`` (ascending), asked for the taps their heads (and
        candidates) read, each for the rows that read it."""
        sub = plan.batch.group(rows)  # holds the rows in this order
        position = {row: i for i, row in enumerate(rows)}
        members: dict[int, list[int]] = {}
        needs: dict[int, set[int]] = {}
        for key, reader in plan.users.items():
            wanted = [row for row in reader.rows if row in position]
            if not wanted:
                continue
            members[key] = wanted
            local = {position[row] for row in wanted}
            needs.setdefault(reader.head.spec.branch_layer, set()).update(local)
            if key in plan.candidates:  # the candidate reads the same rows, maybe another tap
                needs.setdefault(plan.candidates[key].spec.branch_layer, set()).update(local)
        return TrunkRun(rows, sub, position, members, self._trunk_taps(sub, needs))

    def _run_head(self, plan: Plan, run: TrunkRun, head: LoadedHead, rows: list[int]) -> Answered:
        """``head`` on its ``rows`` of a trunk run: decoded to one result per row that is a whole
        text; kept raw for rows that are windows of a longer text (``_pool`` decodes those)."""
        t0 = time.perf_counter()
        hidden, held = run.taps[head.spec.branch_layer]
        local = [run.position[row] for row in rows]
        if len(rows) == run.batch.size:  # every row of the run, in the run's order
            rows, part = run.rows, run.batch
        else:
            part = run.batch.rows(local)
        if local != held:  # the tap holds other rows too: pick this head's
            hidden = self._rows.take(hidden, _positions(held, local))
        raw = head.session.run(hidden, part.attention_mask)
        pieces = {row: raw[i] for i, row in enumerate(rows) if plan.windowed(row)}
        if pieces:  # decode the whole texts only
            whole = [i for i, row in enumerate(rows) if row not in pieces]
            rows, local = [rows[i] for i in whole], [local[i] for i in whole]
            raw, part = raw[whole], part.rows(whole)
        row_texts = [plan.texts[plan.text_of[row]] for row in rows]
        outputs = decode(head.spec, raw, part, row_texts) if rows else []
        t1 = time.perf_counter()
        elapsed = t1 - t0
        self._metrics.head_seconds.labels(head.spec.kind).observe(elapsed)
        if (traced := traced_batch.get()) is not None:
            traced.head(t0, t1, head, len(rows) + len(pieces))
        return Answered(rows, local, part, row_texts, outputs, elapsed, pieces)

    def _fitted(self, groups: list[list[int]], lengths: np.ndarray) -> tuple[list[list[int]], int]:
        """The groups cut into runs that fit the memory budget (each a run of consecutive rows
        of its group, so still ascending), and the planned bytes of the largest run. Raises
        TooLarge when a text does not fit even alone."""
        budget, room, largest = self.budget, self.budget.room(), 0
        fitted: list[list[int]] = []
        for group in groups:
            length = int(lengths[group].max())
            per_run = min(budget.rows_per_run(length, room), len(group))
            if per_run == 0:
                raise TooLarge(budget.refusal(length, room))
            if per_run < len(group):
                self._metrics.memory_splits.inc()
            fitted.extend(group[i : i + per_run] for i in range(0, len(group), per_run))
            largest = max(largest, budget.model.run_bytes(per_run, length))
        return fitted, largest

    def run_shadow(self, work: ShadowWork) -> list[Output]:
        """A candidate head on the rows and taps a served head read (after they were answered)."""
        hidden = work.hidden if work.local is None else self._rows.take(work.hidden, work.local)
        raw = work.candidate.session.run(hidden, work.batch.attention_mask)
        return decode(work.candidate.spec, raw, work.batch, work.texts)

    def probe(self, head: LoadedHead) -> None:
        """One real inference through trunk and head; the output must fit the head's spec."""
        batch, taps = self._run_trunk([PROBE_TEXT, "ok"], {head.spec.branch_layer})
        try:
            raw = head.session.run(taps[head.spec.branch_layer], batch.attention_mask)
        except Exception as exc:  # ORT raises several unrelated types at run time
            raise InvalidInput(f"head {head.spec.task!r} fails on a probe text: {exc}") from exc
        spec = head.spec
        expected = spec.output_shape(batch.size, batch.attention_mask.shape[1])
        if raw.shape != expected or raw.dtype != np.float32:
            raise InvalidInput(
                f"head {spec.task!r} returns {raw.dtype}{list(raw.shape)} on a probe batch; its "
                f"head.json implies float32{list(expected)}"
            )
        if not np.all(np.isfinite(raw)):
            raise InvalidInput(f"head {spec.task!r} returns non-finite values on a probe text")

    def tokens(self, texts: list[str]) -> list[list[Token]]:
        """Per text, the tokens the trunk reads (truncated to the served length)."""
        return self._encoder.tokens(texts)

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
