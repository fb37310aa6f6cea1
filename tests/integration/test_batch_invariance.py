"""The engine's half of the oracle: ``predict_many(jobs)`` equals each job's text run alone.

Whatever texts share a micro-batch (lengths, duplicates, tasks of every kind at different branch
layers, texts read whole in several windows) and however it is cut into length groups and into
runs that fit a memory budget, each text's result is the one it gets alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.app import create_app
from multitask_serve.service.engine import Engine
from multitask_serve.service.memory import RUN_FIXED_BYTES, ActivationModel, MemoryBudget
from multitask_serve.service.types import Job
from tests.conftest import make_settings
from tests.factories import NER_LABELS, WORDS, budget_with_room, export_head
from tests.oracle import compare

# A run cost of 0 cuts wherever padding is saved, 10**6 never cuts, the others in between.
GROUP_COSTS = (0, 4, 32, 10**6)
# Memory budgets that let a run hold this many rows of the longest texts (more of shorter ones):
# the batch is cut into runs to fit, which must not change any answer either.
ROWS_PER_RUN = (1, 3)


def budget_for(rows: int, hidden_size: int, length: int) -> MemoryBudget:
    """A budget whose room holds ``rows`` rows of ``length`` tokens, and not one more."""
    model = ActivationModel(hidden_size)
    room = model.run_bytes(rows, length) + (model.run_bytes(1, length) - RUN_FIXED_BYTES) // 2
    budget = budget_with_room(model, room)
    assert budget.rows_per_run(length, budget.room()) == rows
    return budget


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, built_repo: Path, exporter: Any) -> Any:
    """One engine (and its registry) per group cost, on a repository with a head of every kind."""
    root = tmp_path_factory.mktemp("invariance") / "repo"
    shutil.copytree(built_repo, root)
    repository = ModelRepository(root)
    for spec, model in (
        export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, ("n", "o", "p"), 0, 1),
        export_head(exporter, "topic", Kind.SEQUENCE_CLASSIFICATION, ("a", "b", "c"), 2, 3),
        export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, 1, 4),
    ):
        repository.add_head(spec, model)
    made = {}
    for cost in GROUP_COSTS:
        app = create_app(make_settings(root, batch_group_cost_tokens=cost), CollectorRegistry())
        made[cost] = app.state.services.engine, app.state.services.registry
    for rows in ROWS_PER_RUN:
        app = create_app(make_settings(root), CollectorRegistry())
        engine = app.state.services.engine
        spec = engine.trunk_spec
        engine.budget = budget_for(rows, spec.hidden_size, spec.max_length)
        made[f"{rows} rows per run"] = engine, app.state.services.registry
    return made


TASKS = ("sentiment", "topic", "ner", "topic-zs", "embed")
texts = st.one_of(
    # Lengths a few tokens apart: padding that costs more than a run, yet no cut that pays.
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
    st.lists(st.sampled_from(WORDS), max_size=80).map(" ".join),
    st.text(max_size=30),
    # Past the served length (64 tokens): read whole, up to about eight windows, each a row that
    # length groups and memory splits place like any other.
    st.lists(st.sampled_from(WORDS), min_size=60, max_size=250).map(" ".join),
)
jobs = st.lists(
    st.tuples(
        st.lists(st.sampled_from(TASKS), min_size=1, max_size=len(TASKS), unique=True),
        st.lists(texts, min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=jobs, cost=st.sampled_from([*GROUP_COSTS, *(f"{n} rows per run" for n in ROWS_PER_RUN)])
)
def test_each_text_in_a_micro_batch_gets_the_result_it_gets_alone(engines, jobs, cost):
    engine: Engine = engines[cost][0]
    heads = engines[cost][1].loaded(sorted(engines[cost][1].snapshot()))
    batch = [Job({t: heads[t] for t in tasks}, list(texts)) for tasks, texts in jobs]
    together = engine.predict_many(batch)
    for j, (job, done) in enumerate(zip(batch, together, strict=True)):
        assert list(done.results) == list(job.heads)
        for i, text in enumerate(job.texts):
            alone = engine.predict_many([Job(job.heads, [text])])[0]
            assert done.truncated[i] == alone.truncated[0]
            assert done.windows[i] == alone.windows[0]
            for task, result in done.results.items():
                kind = str(heads[task].spec.kind)
                ref = alone.results[task].outputs[0]
                problem, _ = compare(kind, result.outputs[i], ref)
                assert problem is None, f"job {j} text {i} {text!r} task {task}: {problem}"
