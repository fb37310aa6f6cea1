"""The memory budget through the app: runs cut to fit, and a text that cannot fit even alone
refused with each wire format's 413 (OpenAI's 400) that names the limit, changing nothing.

The engine's budget gets a fixed resident size here, so that its room is exact whatever this test
process holds; bench/ and the e2e tier measure a real process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.app import create_app
from multitask_serve.service.memory import ActivationModel
from tests.conftest import make_settings
from tests.factories import NER_LABELS, WORDS, budget_with_room, export_head
from tests.oracle import compare

FITS = 20  # tokens: a text up to this long fits a run alone; a longer one does not


@pytest.fixture
def served(repo: Path, exporter: Any) -> Path:
    """The built repository with a head-only and a layered head beside embed and topic-zs."""
    stored = ModelRepository(repo)
    sentiment = ("negative", "neutral", "positive")
    stored.add_head(
        *export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=1)
    )
    stored.add_head(*export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, 1, 4))
    return repo


@pytest.fixture
def plain(served: Path) -> TestClient:
    return TestClient(create_app(make_settings(served), CollectorRegistry()))


@pytest.fixture
def tight(served: Path) -> TestClient:
    app = create_app(make_settings(served), CollectorRegistry())
    engine = app.state.services.engine
    model = ActivationModel(engine.trunk_spec.hidden_size)
    room = model.run_bytes(1, FITS)
    engine.budget = budget_with_room(model, room)
    assert engine.budget.rows_per_run(FITS, engine.budget.room()) == 1
    assert engine.budget.rows_per_run(FITS + 1, engine.budget.room()) == 0
    return TestClient(app)


SHORT = "the bank rates fell"  # 6 tokens with [CLS] and [SEP]
LONG = " ".join(WORDS[:40])  # 42 tokens


def test_a_text_too_long_for_the_memory_limit_gets_413_naming_it(tight):
    r = tight.post("/predict/sentiment", json={"inputs": [SHORT, LONG]})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large"
    assert "MTS_MEMORY_LIMIT_MB=" in error["message"]
    assert "a text of 42 tokens" in error["message"]


def test_every_wire_format_refuses_it_in_its_own_form(tight):
    r = tight.post("/predict", json={"inputs": [LONG], "tasks": ["sentiment", "ner"]})
    assert r.status_code == 413 and "MTS_MEMORY_LIMIT_MB" in r.json()["error"]["message"]
    r = tight.post("/tei/embed", json={"inputs": [LONG]})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation"
    assert "MTS_MEMORY_LIMIT_MB" in r.json()["error"]
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [LONG]}
    r = tight.post("/v2/models/sentiment/infer", json={"inputs": [tensor]})
    assert r.status_code == 413 and "MTS_MEMORY_LIMIT_MB" in r.json()["error"]
    r = tight.post("/v1/embeddings", json={"model": "embed", "input": [LONG]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "MTS_MEMORY_LIMIT_MB" in r.json()["error"]["message"]


def test_the_refusal_changes_nothing_and_texts_that_fit_run_one_per_run(tight, plain):
    texts = [SHORT, "i love paris", "ok", "john scored a great goal"]
    before = tight.post("/predict", json={"inputs": texts, "tasks": ["sentiment", "ner"]})
    assert before.status_code == 200
    assert tight.post("/predict/ner", json={"inputs": [LONG]}).status_code == 413
    after = tight.post("/predict", json={"inputs": texts, "tasks": ["sentiment", "ner"]})
    assert after.json() == before.json()  # the same runs as before the refusal: bit for bit
    # Each group ran as one run per text (the room holds one), and the answers are those of a
    # server without the budget.
    splits = [
        line
        for line in tight.get("/metrics").text.splitlines()
        if line.startswith("mts_memory_split_groups_total")
    ]
    assert splits and float(splits[0].split()[-1]) >= 2
    whole = plain.post("/predict", json={"inputs": texts, "tasks": ["sentiment", "ner"]}).json()
    for task, body in after.json().items():
        assert body["truncated"] == whole[task]["truncated"]
        for got, ref in zip(body["outputs"], whole[task]["outputs"], strict=True):
            assert compare(body["kind"], got, ref)[0] is None, (task, got, ref)


def test_without_a_limit_nothing_is_cut_or_refused(plain):
    r = plain.post("/predict/ner", json={"inputs": [LONG] * 8})
    assert r.status_code == 200
    metrics = plain.get("/metrics").text
    assert "mts_memory_split_groups_total 0.0" in metrics
