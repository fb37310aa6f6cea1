"""A differential oracle: under random concurrent traffic every answer is its own text's answer.

The reference for a (task, text) is what a server answers for that text sent alone, one request at
a time with nothing else in flight. Several ``mts serve`` processes with different micro-batching
settings take random waves of concurrent requests (single-task, multi-task and Open Inference
Protocol, TEI's root route and OpenAI's embeddings in float and base64; random texts, sizes and
duplicates) while admin operations change *other* tasks; every answer for a task that exists
throughout must equal its reference: labels, entities and spans exactly, scores within
``tests.oracle.TOLERANCE``. One server under test loads heads on demand within a budget that holds
about two of them (``MTS_HEAD_MEMORY_MB``), so nearly every request finds its head evicted and
loads it again, most often from its compiled form: the figures count its loads, evictions and
compiled loads. Texts run from none to about eight windows of the served length: every route but
TEI reads a long text whole (the reference is the text alone, read whole; the windows each answer
says it took must match), TEI's truncate cuts it (the reference: the text alone, cut). TEI and
OpenAI refuse an empty text; a call of theirs holding one must get that protocol's refusal (400,
``Empty`` or ``invalid_request_error``) and nothing else.

hypothesis drives it as a state machine, seeded, and shrinks a failure to a minimal program.
CI runs it for ``ORACLE_SECONDS`` (default 150 s); set it higher to run longer, and
``ORACLE_SEED`` for other seeds. ``ORACLE_RESULTS=<file>`` writes the run's figures as
JSON (calls, answers checked, differences, largest score deviation per head kind).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind
from support.servers import start_server
from tests.conftest import ADMIN_TOKEN, SERVER_ENV
from tests.factories import NER_LABELS, WORDS, export_head
from tests.oracle import compare

SECONDS = float(os.environ.get("ORACLE_SECONDS", "150"))
SEED = int(os.environ.get("ORACLE_SEED", "0"))
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Tasks that exist for the whole run, one or more of every kind, at different branch layers.
STABLE = ("sentiment", "topic", "ner", "topic-zs", "embed")
# Tasks that admin operations add, replace, roll back and remove while traffic runs.
SCRATCH = ("scratch", "scratch-zs")
# Micro-batching settings of the servers under test: run cost (0 splits at any saving, 10**6
# never splits), batch size and wait.
CONFIGS = (
    {"MTS_BATCH_GROUP_COST_TOKENS": "32", "MTS_BATCH_MAX_TEXTS": "32"},
    # Room for about two of the oracle's heads (each counts its graph plus 256 KiB): nearly every
    # request loads a head that was evicted, and every answer must still be its reference. Every
    # head is compiled (however small), so most of those loads come from the compiled cache.
    {
        "MTS_BATCH_GROUP_COST_TOKENS": "4",
        "MTS_BATCH_MAX_TEXTS": "8",
        "MTS_BATCH_MAX_WAIT_MS": "3",
        "MTS_HEAD_MEMORY_MB": "0.6",
        "MTS_HEAD_CACHE_MIN_MB": "0",
    },
    {
        "MTS_BATCH_GROUP_COST_TOKENS": "1000000",
        "MTS_BATCH_MAX_TEXTS": "64",
        "MTS_BATCH_MAX_WAIT_MS": "10",
    },
)
MAX_TEXTS = 64  # the servers' max_batch_texts (the default)
CLIENTS = 16
REPLAYS = 5

FIXED_TEXTS = [
    "i love this phone",
    "shares fell after the results.",
    "john scored a great goal in the final",
    "the bank rates fell and the market was bad",
    "ok",
    "",
    "Mary went to London with John and Apple and Google",
    "élection à Paris — le ministre a voté 🗳️",
    "東京の株式市場",
    " ".join(WORDS),  # past the tiny trunk's maximum length: two windows
]
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=90).map(" ".join)
# From a few tokens past the served length (64 tokens) to about eight windows.
long_words = st.lists(st.sampled_from(WORDS), min_size=60, max_size=250).map(" ".join)
texts = st.one_of(
    st.sampled_from(FIXED_TEXTS),
    words,
    words.map(str.title),
    st.text(max_size=40),  # any Unicode but lone surrogates (the service refuses those)
    long_words,
)


@dataclass(frozen=True)
class Call:
    # "task" (/predict/<task>), "multi" (/predict), "v2" (/v2/models/<task>/infer), "tei"
    # (/tei/<task>, TEI's root route), "openai-float" or "openai-base64" (/v1/embeddings with that
    # encoding_format; embedding tasks only)
    route: str
    tasks: tuple[str, ...]
    inputs: str | tuple[str, ...]

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


def calls(tasks: tuple[str, ...]) -> st.SearchStrategy[Call]:
    batch = st.one_of(
        texts,
        st.lists(texts, min_size=1, max_size=MAX_TEXTS).map(tuple),
        # The same text many times in one request.
        st.tuples(texts, st.integers(2, MAX_TEXTS)).map(lambda t: (t[0],) * t[1]),
    )
    single = st.builds(Call, st.just("task"), st.sampled_from(tasks).map(lambda t: (t,)), batch)
    multi = st.builds(
        Call,
        st.just("multi"),
        st.lists(st.sampled_from(STABLE), min_size=1, max_size=len(STABLE)).map(tuple),
        batch,
    )
    v2 = st.builds(
        Call, st.just("v2"), st.sampled_from(STABLE).map(lambda t: (t,)), batch.map(_as_list)
    )
    tei = st.builds(Call, st.just("tei"), st.sampled_from(STABLE).map(lambda t: (t,)), batch)
    openai = st.builds(
        Call, st.sampled_from(("openai-float", "openai-base64")), st.just(EMBEDDING), batch
    )
    return st.one_of(single, multi, v2, tei, openai)


# The stable embedding task: OpenAI's route serves embedding tasks only.
EMBEDDING = ("embed",)
# Routes that refuse an empty text, as the protocols they speak do.
REFUSE_EMPTY = ("tei", "openai-float", "openai-base64")


def _as_list(inputs: str | tuple[str, ...]) -> tuple[str, ...]:
    return (inputs,) if isinstance(inputs, str) else inputs


ADMIN_OPS = ("add-archive", "replace-archive", "add-zero-shot", "rollback", "remove", "remove-zs")


@dataclass
class Figures:
    calls: int = 0
    answers_checked: int = 0
    differences: list[str] = field(default_factory=list)
    reference_calls: int = 0
    admin_ops: dict[str, int] = field(default_factory=dict)
    max_deviation: dict[str, float] = field(default_factory=dict)
    waves: int = 0
    clients: dict[int, int] = field(default_factory=dict)  # concurrent requests -> waves
    failed_waves: int = 0
    entities: int = 0  # entity spans compared (the NER head tags some texts, not all)
    refusals_checked: int = 0  # TEI/OpenAI calls holding an empty text, refused as they must be
    answers_by_route: dict[str, int] = field(default_factory=dict)
    first_failure: dict[str, int] | None = None
    windowed_references: int = 0  # references of texts read in several windows
    windowed_answers: int = 0  # answers checked against those
    most_windows: int = 0

    def deviation(self, kind: str, value: float) -> None:
        self.max_deviation[kind] = max(self.max_deviation.get(kind, 0.0), value)


class Harness:
    """The servers, a pool of concurrent clients, the references and the running figures."""

    def __init__(self, reference: str, servers: list[str], archives: dict[str, bytes]) -> None:
        self.reference, self.servers, self.archives = reference, servers, archives
        self.references: dict[tuple[str, str, bool], dict[str, Any]] = {}
        self.kinds: dict[str, str] = {}
        self.figures = Figures()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(CLIENTS + 1, thread_name_prefix="oracle-client")
        self._ref_client = httpx.Client(timeout=60)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._ref_client.close()

    def _client(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(timeout=60)
        return self._local.client

    def alone(self, task: str, text: str, cut: bool = False) -> dict[str, Any]:
        """The reference: the text sent alone, with nothing else in flight on that server, read
        whole (in windows when it is long) or ``cut`` at the served length."""
        key = (task, text, cut)
        if key not in self.references:
            body = {"inputs": text, "truncate": cut}
            r = self._ref_client.post(f"{self.reference}/predict/{task}", json=body)
            assert r.status_code == 200, (task, text, r.text)
            body = r.json()
            self.kinds[task] = body["kind"]
            self.references[key] = {
                "output": body["outputs"],
                "truncated": body["truncated"],
                "windows": body["windows"],
            }
            self.figures.reference_calls += 1
            self.figures.most_windows = max(self.figures.most_windows, body["windows"])
            self.figures.windowed_references += body["windows"] > 1
        return self.references[key]

    def send(self, server: str, call: Call) -> httpx.Response:
        client = self._client()
        if call.route == "task":
            return client.post(f"{server}/predict/{call.tasks[0]}", json={"inputs": call.inputs})
        if call.route == "multi":
            body = {"tasks": list(call.tasks), "inputs": call.inputs}
            return client.post(f"{server}/predict", json=body)
        if call.route == "tei":
            body = {"inputs": call.inputs, "truncate": True, "normalize": False}
            return client.post(f"{server}/tei/{call.tasks[0]}", json=body)
        if call.route.startswith("openai-"):
            encoding = call.route.removeprefix("openai-")
            body = {"model": call.tasks[0], "input": call.inputs, "encoding_format": encoding}
            return client.post(f"{server}/v1/embeddings", json=body)
        tensor = {"name": "text", "datatype": "BYTES", "shape": [len(call.texts)]}
        body = {"inputs": [{**tensor, "data": call.texts}]}
        return client.post(f"{server}/v2/models/{call.tasks[0]}/infer", json=body)

    def admin(self, server: str, op: str) -> list[str]:
        client = self._client()
        if op in ("add-archive", "replace-archive"):
            replace = op == "replace-archive"
            r = client.post(
                f"{server}/admin/heads/scratch",
                params={"replace": str(replace).lower()},
                content=self.archives["v2" if replace else "v1"],
                headers=ADMIN,
            )
            allowed = {201} if replace else {201, 409}
        elif op == "add-zero-shot":
            labels = {"good": "good great happy love", "bad": "bad awful sad hate"}
            r = client.post(
                f"{server}/admin/heads/scratch-zs/zero-shot",
                json={"labels": labels, "replace": True},
                headers=ADMIN,
            )
            allowed = {201}
        elif op == "rollback":
            r = client.post(f"{server}/admin/heads/scratch/rollback", headers=ADMIN)
            allowed = {200, 404, 409}
        else:
            task = "scratch-zs" if op == "remove-zs" else "scratch"
            r = client.delete(f"{server}/admin/heads/{task}", headers=ADMIN)
            allowed = {200, 404}
        self.figures.admin_ops[op] = self.figures.admin_ops.get(op, 0) + 1
        if r.status_code not in allowed:
            return [f"admin {op}: status {r.status_code} {r.text}"]
        return []

    def wave(self, server: str, wave: list[Call], op: str | None) -> list[str]:
        """Send every call at once (and the admin operation beside them), then check each answer.

        Once any wave has failed, hypothesis replays and shrinks; a concurrency failure depends
        on timing, so from then on a wave is sent up to ``REPLAYS`` times and fails if any try
        does. That keeps a failure reproducible while it shrinks, at no cost while none is seen.
        """
        for call in wave:  # references first, while nothing else is in flight
            for task in call.tasks:
                if task in STABLE:
                    for text in call.texts:
                        self.alone(task, text, cut=call.route == "tei")
        for _ in range(REPLAYS if self.figures.failed_waves else 1):
            problems = self._send_wave(server, wave, op)
            if problems:
                if not self.figures.failed_waves:
                    self.figures.first_failure = {
                        "after_waves": self.figures.waves,
                        "after_calls": self.figures.calls,
                        "after_answers_checked": self.figures.answers_checked,
                    }
                self.figures.failed_waves += 1
                return problems
        return []

    def _send_wave(self, server: str, wave: list[Call], op: str | None) -> list[str]:
        start = threading.Barrier(len(wave) + (op is not None))

        def at_once(fn: Any, *args: Any) -> Any:
            start.wait(timeout=30)
            return fn(*args)

        futures = [self._pool.submit(at_once, self.send, server, call) for call in wave]
        admin = self._pool.submit(at_once, self.admin, server, op) if op else None
        responses = [f.result() for f in futures]
        problems = admin.result() if admin is not None else []
        self.figures.calls += len(wave)
        self.figures.waves += 1
        self.figures.clients[len(wave)] = self.figures.clients.get(len(wave), 0) + 1
        for call, response in zip(wave, responses, strict=True):
            found = self.check(call, response)
            self.figures.differences += found
            problems += found
        return problems

    def check(self, call: Call, response: httpx.Response) -> list[str]:
        """What is wrong with one answer: each text's output against its alone-reference."""
        if any(task in SCRATCH for task in call.tasks):
            # A task that admin operations change: it may be absent; when present, it answers.
            if response.status_code not in (200, 404):
                return [f"{call}: status {response.status_code} {response.text}"]
            return []
        if call.route in REFUSE_EMPTY and "" in call.texts:
            return self.check_refusal(call, response)
        if response.status_code != 200:
            return [f"{call}: status {response.status_code} {response.text}"]
        body = response.json()
        single = isinstance(call.inputs, str)
        cut = call.route == "tei"  # TEI's truncate cuts; every other route reads texts whole
        problems = []
        for task in call.tasks:
            refs = [self.references[(task, text, cut)] for text in call.texts]
            windows: list[int | None] = [ref["windows"] for ref in refs]  # where no answer says
            if call.route == "v2":
                answers = from_v2(self.kinds[task], body, len(call.texts))
                windows = from_v2_windows(body)
            elif call.route == "tei":
                answers = from_tei(self.kinds[task], body, single, refs)
            elif call.route.startswith("openai-"):
                try:
                    answers = from_openai(body, refs, call.route.removeprefix("openai-"))
                except ValueError as exc:
                    return [f"{call}: {exc}"]
            else:
                part = body if call.route == "task" else body[task]
                outputs = [part["outputs"]] if single else part["outputs"]
                flags = [part["truncated"]] if single else part["truncated"]
                windows = [part["windows"]] if single else part["windows"]
                answers = list(zip(outputs, flags, strict=True))
            if len(answers) != len(call.texts) or len(windows) != len(call.texts):
                return [f"{call}: {len(answers)} answers for {len(call.texts)} texts"]
            for i, (text, (output, truncated)) in enumerate(zip(call.texts, answers, strict=True)):
                ref = refs[i]
                expected = ref["output"]
                if call.route.startswith("openai-"):  # OpenAI's vectors are unit length
                    expected = unit(expected)
                found, deviation = compare(self.kinds[task], output, expected)
                self.figures.deviation(self.kinds[task], deviation)
                if truncated != ref["truncated"]:
                    found = f"truncated {truncated} != alone {ref['truncated']}; {found}"
                if windows[i] != ref["windows"]:
                    found = f"windows {windows[i]} != alone {ref['windows']}; {found}"
                self.figures.windowed_answers += ref["windows"] > 1
                self.figures.answers_checked += 1
                by_route = self.figures.answers_by_route
                by_route[call.route] = by_route.get(call.route, 0) + 1
                if self.kinds[task] == "token-classification":
                    self.figures.entities += len(ref["output"])
                if found:
                    problems.append(f"{call.route} {task} inputs[{i}]={text!r}: {found}")
        return problems

    def check_refusal(self, call: Call, response: httpx.Response) -> list[str]:
        """A TEI or OpenAI call holding an empty text: that protocol's 400, in its own form."""
        self.figures.refusals_checked += 1
        if response.status_code != 400:
            return [f"{call}: status {response.status_code} for an empty text (400 expected)"]
        body = response.json()
        if call.route == "tei":
            if body.get("error_type") != "Empty":
                return [f"{call}: TEI refusal {body} is not error_type Empty"]
        elif body.get("error", {}).get("type") != "invalid_request_error":
            return [f"{call}: OpenAI refusal {body} is not an invalid_request_error"]
        return []


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else vector


def from_openai(
    body: dict[str, Any], refs: list[dict[str, Any]], encoding: str
) -> list[tuple[Any, bool]]:
    """Per text (embedding, truncated) from an OpenAI embeddings answer in ``encoding`` (float, or
    base64 of little-endian float32). Raises ValueError for an answer out of order or in the other
    encoding.

    OpenAI's answers carry no truncation flag (the route always cuts); the reference's stands in.
    """
    outputs: list[Any] = []
    for i, item in enumerate(body["data"]):
        if item["index"] != i:
            raise ValueError(f"data[{i}] has index {item['index']}")
        vector = item["embedding"]
        if isinstance(vector, str) != (encoding == "base64"):
            raise ValueError(f"data[{i}] is not in encoding_format {encoding}")
        if isinstance(vector, str):
            vector = np.frombuffer(base64.b64decode(vector), dtype="<f4").tolist()
        outputs.append(vector)
    return [(output, ref["truncated"]) for output, ref in zip(outputs, refs, strict=False)]


def from_v2(kind: str, body: dict[str, Any], n: int) -> list[tuple[Any, bool]]:
    """Per text (output in the native form, truncated) from an OIP v2 JSON answer."""
    tensors = {t["name"]: t for t in body["outputs"]}
    flags = [bool(x) for x in tensors["truncated"]["data"]]
    if kind == "embedding":
        flat = tensors["embedding"]["data"]
        width = tensors["embedding"]["shape"][1]
        outputs: list[Any] = [flat[i * width : (i + 1) * width] for i in range(n)]
    elif kind == "token-classification":
        outputs = [json.loads(x) for x in tensors["entities"]["data"]]
    else:
        width = tensors["scores"]["shape"][1]
        flat = tensors["scores"]["data"]
        outputs = [
            {"label": label, "score": score, "scores": flat[i * width : (i + 1) * width]}
            for i, (label, score) in enumerate(
                zip(tensors["label"]["data"], tensors["score"]["data"], strict=True)
            )
        ]
    return list(zip(outputs, flags, strict=True))


def from_v2_windows(body: dict[str, Any]) -> list[int | None]:
    """Per text, the windows an OIP v2 JSON answer says it took."""
    tensors = {t["name"]: t for t in body["outputs"]}
    return list(tensors["windows"]["data"])


def from_tei(
    kind: str, body: Any, single: bool, refs: list[dict[str, Any]]
) -> list[tuple[Any, bool]]:
    """Per text (output in the native form, truncated) from TEI's root route's answer.

    TEI's answers carry no truncation flag; the call asks for truncation, so the reference's flag
    stands in. Label scores come back in the reference's label order when the labels agree.
    """
    if kind == "token-classification" and single:
        body = [body]
    outputs: list[Any] = []
    for row, ref in zip(body, refs, strict=False):
        if kind == "embedding":
            outputs.append(row)
        elif kind == "token-classification":
            outputs.append(
                [
                    {
                        "entity": e["entity_group"],
                        "start": e["start"],
                        "end": e["end"],
                        "text": e["word"],
                        "score": e["score"],
                    }
                    for e in row
                ]
            )
        else:
            scores = {p["label"]: p["score"] for p in row}
            if set(scores) == set(ref["output"]["scores"]):
                scores = {label: scores[label] for label in ref["output"]["scores"]}
            outputs.append({"label": row[0]["label"], "score": row[0]["score"], "scores": scores})
    return [(output, ref["truncated"]) for output, ref in zip(outputs, refs, strict=False)]


def oracle_machine(harness: Harness) -> type[RuleBasedStateMachine]:
    class Oracle(RuleBasedStateMachine):
        @rule(
            server=st.sampled_from(range(len(harness.servers))),
            # Mostly 8-16 requests at once; fewer lets a failure shrink to the requests it needs.
            wave=st.one_of(
                st.lists(calls(STABLE + SCRATCH), min_size=1, max_size=CLIENTS),
                st.lists(calls(STABLE + SCRATCH), min_size=8, max_size=CLIENTS),
                st.lists(calls(STABLE + SCRATCH), min_size=8, max_size=CLIENTS),
            ),
            op=st.none() | st.sampled_from(ADMIN_OPS),
        )
        def concurrent_wave(self, server: int, wave: list[Call], op: str | None) -> None:
            self.problems += harness.wave(harness.servers[server], wave, op)

        def __init__(self) -> None:
            super().__init__()
            self.problems: list[str] = []

        def teardown(self) -> None:
            # Failing here, at the end of the program, and not in the step that saw it: a replay
            # in which timing moves the failure to another step is then the same failure to
            # hypothesis (which refuses a program that ends at another step as flaky).
            if self.problems:
                shown = "\n".join(self.problems[:12])
                more = len(self.problems) - 12
                raise AssertionError(shown + (f"\n... and {more} more" if more > 0 else ""))

    return Oracle


def _install_heads(repo: Path, exporter: Any) -> dict[str, bytes]:
    """The stable trained heads go into the repository; the scratch ones become archives."""
    sentiment = ("negative", "neutral", "positive")
    repository = ModelRepository(repo)
    for spec, model in (
        export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=1),
        export_head(
            exporter, "topic", Kind.SEQUENCE_CLASSIFICATION, ("a", "b", "c", "d"), k=2, seed=3
        ),
        export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, k=1, seed=4),
    ):
        repository.add_head(spec, model)
    return {
        "v1": pack_head(
            *export_head(exporter, "scratch", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=7)
        ),
        "v2": pack_head(
            *export_head(exporter, "scratch", Kind.TOKEN_CLASSIFICATION, NER_LABELS, k=3, seed=8)
        ),
    }


def _residency(url: str) -> dict[str, float]:
    """A server's head loads and evictions so far, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    wanted = {
        "cold_loads": "mts_head_cold_load_duration_seconds_count",
        "evictions": "mts_head_evictions_total",
        "hits": 'mts_head_lookups_total{result="hit"}',
        "misses": 'mts_head_lookups_total{result="miss"}',
        "compiled_loads": 'mts_head_compiled_lookups_total{result="hit"}',
    }
    found = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        for key, sample in wanted.items():
            if line.startswith(sample + " "):
                found[key] = float(line.split()[-1])
    return found


@contextlib.contextmanager
def processes(repo: Path, logs: Path) -> Iterator[tuple[str, list[str]]]:
    # The queue's bound counts a long text once per window; 16 clients sending up to 64 copies
    # of a long text would pass the default, and the oracle checks answers, not admission.
    poll = {"MTS_REPOSITORY_POLL_SECONDS": "0.5", "MTS_MAX_QUEUED_TEXTS": "1000000"}
    started = []
    try:
        for i, env in enumerate(({}, *CONFIGS)):
            started.append(start_server(repo, logs / f"server-{i}.log", SERVER_ENV | poll | env))
        urls = [url for _, url in started]
        yield urls[0], urls[1:]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            proc.wait(timeout=30)


def test_every_answer_equals_its_text_sent_alone_under_concurrent_traffic(repo, exporter, tmp_path):
    archives = _install_heads(repo, exporter)
    with processes(repo, tmp_path) as (reference, servers):
        harness = Harness(reference, servers, archives)
        machine = oracle_machine(harness)
        runs, deadline = 0, time.monotonic() + SECONDS
        try:
            while time.monotonic() < deadline:
                # Bounded runs, each with its own seed, until the time is spent: a failure in any
                # of them is shrunk and printed as the minimal program that shows it.
                run_state_machine_as_test(
                    seed(SEED + runs)(machine),
                    settings=settings(
                        max_examples=4,
                        stateful_step_count=5,
                        deadline=None,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                    ),
                )
                runs += 1
        finally:
            harness.close()
            figures = harness.figures
            residency = [_residency(url) for url in servers]
            summary = {
                "seconds": SECONDS,
                "seed": SEED,
                "hypothesis_runs": runs,
                "waves": figures.waves,
                "calls": figures.calls,
                "answers_checked": figures.answers_checked,
                "entity_spans_checked": figures.entities,
                "answers_checked_by_route": dict(sorted(figures.answers_by_route.items())),
                "empty_text_refusals_checked": figures.refusals_checked,
                "windowed_references": figures.windowed_references,
                "windowed_answers_checked": figures.windowed_answers,
                "most_windows": figures.most_windows,
                "differences": len(figures.differences),
                "first_differences": figures.differences[:5],
                "failed_waves": figures.failed_waves,
                "first_failure": figures.first_failure,
                "concurrent_requests_per_wave": dict(sorted(figures.clients.items())),
                "reference_calls": figures.reference_calls,
                "admin_ops": figures.admin_ops,
                "max_score_deviation": figures.max_deviation,
                "servers": [dict(c) for c in CONFIGS],
                "residency": residency,
            }
            print(json.dumps(summary, indent=1))
            if os.environ.get("ORACLE_RESULTS"):
                Path(os.environ["ORACLE_RESULTS"]).write_text(json.dumps(summary, indent=1))
    assert figures.answers_checked > 1000, "the oracle checked too little to mean anything"
    churned = residency[CONFIGS.index(next(c for c in CONFIGS if "MTS_HEAD_MEMORY_MB" in c))]
    assert churned["evictions"] > 10, residency  # the budget forced churn
    assert churned["compiled_loads"] > 10, residency  # loads came from compiled heads
    assert figures.windowed_answers > 100 and figures.most_windows >= 4, figures
    routes = {"task", "multi", "v2", "tei", "openai-float", "openai-base64"}
    assert set(figures.answers_by_route) == routes, figures.answers_by_route
    assert set(figures.max_deviation) >= {
        "sequence-classification",
        "token-classification",
        "zero-shot",
        "embedding",
    }


if SECONDS <= 0:
    pytest.skip("ORACLE_SECONDS=0 turns the oracle off", allow_module_level=True)
