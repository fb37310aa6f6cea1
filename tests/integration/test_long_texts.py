"""Texts longer than the served length, read whole in overlapping windows (service/windows.py).

Each window is one row of a batch; a text's answer is pooled from its windows' rows: label
scores weighted by each window's tokens of text, vectors the same then scaled to unit length,
entity tags per token from the window where the token has the most context, decoded once over
the whole text. The reference here runs every window alone through trunk and head and pools
by the same rules written out again, so the engine's batching of windows with other rows, the
bookkeeping of rows per text and the offsets into the original text are what is checked.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.app import create_app
from multitask_serve.service.postprocess import entities, softmax
from multitask_serve.service.types import Job
from tests.conftest import make_settings
from tests.factories import NER_LABELS, WORDS, export_head

TASKS = ("sentiment", "ner", "topic-zs", "embed")


@pytest.fixture(scope="module")
def long_repo(tmp_path_factory: pytest.TempPathFactory, built_repo: Path, exporter: Any) -> Path:
    root = tmp_path_factory.mktemp("long") / "repo"
    shutil.copytree(built_repo, root)
    repository = ModelRepository(root)
    for spec, model in (
        export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, ("n", "o", "p"), 1, 1),
        export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, 2, 4),
    ):
        repository.add_head(spec, model)
    return root


@pytest.fixture(scope="module")
def app(long_repo: Path) -> Any:
    return create_app(make_settings(long_repo), CollectorRegistry())


def long_text(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def alone(app: Any, text: str, task: str) -> Any:
    """``task``'s answer on ``text`` from each window run alone through trunk and head, pooled by
    the documented rules (written out here independently of service/outputs.py)."""
    services = app.state.services
    engine = services.engine
    encoder = engine._encoder
    head = services.registry.loaded([task])[task]
    encoded = encoder.encode([text], whole=True)
    raws, encodings = [], []
    for row in encoded.rows[0]:
        one = encoded.batch.group([row])
        taps = engine._trunk.run_rows(one.feeds, {head.spec.branch_layer: {0}})
        hidden, _ = taps[head.spec.branch_layer]
        raws.append(head.session.run(hidden, one.attention_mask)[0])
        encodings.append(encoded.batch.encodings[row])
    content = [[i for i, s in enumerate(e.special_tokens_mask) if not s] for e in encodings]
    weights = np.array([len(c) for c in content], dtype=np.float64)
    if head.spec.kind == Kind.TOKEN_CLASSIFICATION:
        # Window w holds tokens [w * step, w * step + len); a token's owner is the window where
        # the nearer of its two ends is farthest away (the earlier window on a tie).
        step = encoder.capacity - encoder.overlap
        n = (len(content) - 1) * step + len(content[-1])
        probs, offsets, words = [], [], []
        for token in range(n):
            best = max(
                (min(token - w * step, w * step + len(c) - 1 - token), -w)
                for w, c in enumerate(content)
                if w * step <= token < w * step + len(c)
            )
            w = -best[1]
            at = content[w][token - w * step]
            probs.append(softmax(raws[w])[at])
            offsets.append(encodings[w].offsets[at])
            words.append(encodings[w].word_ids[at])
        return entities(text, np.stack(probs), offsets, words, NER_LABELS)
    if head.spec.kind == Kind.EMBEDDING:
        mean = (weights[:, None] * np.stack(raws)).sum(axis=0)
        return (mean / np.linalg.norm(mean)).tolist()
    probs = (weights[:, None] * softmax(np.stack(raws).astype(np.float64))).sum(axis=0)
    probs /= weights.sum()
    return dict(zip(head.spec.labels, probs.tolist(), strict=True))


def close(kind: str, got: Any, want: Any) -> None:
    if kind == "embedding":
        np.testing.assert_allclose(got, want, atol=1e-5)
    elif kind == "token-classification":
        assert [(e["entity"], e["start"], e["end"]) for e in got] == [
            (e["entity"], e["start"], e["end"]) for e in want
        ]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=1e-5)
    else:
        assert got["scores"].keys() == want.keys()
        np.testing.assert_allclose([got["scores"][k] for k in want], list(want.values()), atol=1e-5)
        assert got["label"] == max(want, key=want.get)


@pytest.mark.parametrize("words", [30, 70, 150, 300])
def test_a_long_text_is_pooled_from_its_windows_each_run_alone(app, words):
    text = long_text(words, seed=words)
    engine = app.state.services.engine
    heads = app.state.services.registry.loaded(list(TASKS))
    short = "ok then"
    # The long text shares its batch with short texts of the same and other requests.
    done = engine.predict_many([Job(heads, [short, text]), Job(heads, [text, short, short])])
    expected = engine._encoder.encode([text], whole=True).windows[0]
    assert words < 40 or expected > 1, "the text must take several windows"
    for job, at in ((done[0], 1), (done[1], 0)):
        assert job.windows[at] == expected and job.windows[at - 1 if at else 1] == 1
        assert job.truncated[at] is False
        for task in TASKS:
            result = job.results[task]
            close(result.kind, result.outputs[at], alone(app, text, task))


def test_windowed_entities_reach_past_the_cut_with_offsets_into_the_text(app):
    client = TestClient(app)
    text = long_text(300, seed=7)
    whole = client.post("/predict/ner", json={"inputs": text}).json()
    cut = client.post("/predict/ner", json={"inputs": text, "truncate": True}).json()
    assert whole["windows"] > 3 and whole["truncated"] is False
    assert cut["windows"] == 1 and cut["truncated"] is True
    reach = max(e["end"] for e in cut["outputs"]) if cut["outputs"] else 0
    assert any(e["start"] >= reach for e in whole["outputs"]), "no entity past the cut"
    ends = [0]
    for e in whole["outputs"]:
        assert text[e["start"] : e["end"]] == e["text"]
        assert e["start"] >= ends[-1]  # in order, not overlapping
        ends.append(e["end"])


def test_every_wire_format_says_how_many_windows_and_can_cut(app):
    client = TestClient(app)
    text = long_text(200, seed=3)
    n = app.state.services.engine._encoder.encode([text], whole=True).windows[0]
    assert n > 1
    both = client.post("/predict", json={"inputs": [text, "hi"], "tasks": ["sentiment", "embed"]})
    assert both.json()["sentiment"]["windows"] == [n, 1]
    assert both.json()["embed"]["truncated"] == [False, False]
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    oip = client.post("/v2/models/sentiment/infer", json=infer).json()
    tensors = {t["name"]: t["data"] for t in oip["outputs"]}
    assert tensors["windows"] == [n] and tensors["truncated"] == [False]
    cut = client.post(
        "/v2/models/sentiment/infer", json={**infer, "parameters": {"truncate": True}}
    )
    tensors = {t["name"]: t["data"] for t in cut.json()["outputs"]}
    assert tensors["windows"] == [1] and tensors["truncated"] == [True]
    bad = client.post("/v2/models/sentiment/infer", json={**infer, "parameters": {"truncate": 1}})
    assert bad.status_code == 400 and "truncate" in bad.json()["error"]
    # TEI keeps TEI's semantics: refused without truncate, cut with it, never windowed.
    assert client.post("/tei/embed/embed", json={"inputs": text}).status_code == 413
    assert (
        client.post("/tei/embed/embed", json={"inputs": text, "truncate": True}).status_code == 200
    )
    # OpenAI's embeddings take the server's default: windows.
    openai = client.post("/v1/embeddings", json={"input": [text], "model": "embed"}).json()
    native = client.post("/predict/embed", json={"inputs": text}).json()["outputs"]
    np.testing.assert_allclose(openai["data"][0]["embedding"], native, atol=1e-6)


def test_past_the_window_cap_a_text_is_refused_by_index_or_cut_on_request(long_repo):
    client = TestClient(create_app(make_settings(long_repo, max_windows=3), CollectorRegistry()))
    text = long_text(300, seed=5)
    ok = client.post("/predict/sentiment", json={"inputs": ["fine", "also fine"]})
    assert ok.status_code == 200
    refused = client.post("/predict/sentiment", json={"inputs": ["fine", text]})
    assert refused.status_code == 413
    message = refused.json()["error"]["message"]
    assert "inputs[1]" in message and "MTS_MAX_WINDOWS" in message and "limit is 3" in message
    cut = client.post("/predict/sentiment", json={"inputs": ["fine", text], "truncate": True})
    assert cut.status_code == 200 and cut.json()["truncated"] == [False, True]
    # Nothing changed: the same request as before answers the same.
    assert client.post("/predict/sentiment", json={"inputs": ["fine", "also fine"]}).json() == (
        ok.json()
    )


def test_the_server_default_can_cut_and_the_queue_counts_windows(long_repo):
    settings = make_settings(long_repo, truncate=True, max_queued_texts=6)
    text = long_text(300, seed=9)
    with TestClient(create_app(settings, CollectorRegistry())) as client:  # a running batcher
        cut = client.post("/predict/sentiment", json={"inputs": text}).json()
        assert cut["truncated"] is True and cut["windows"] == 1
        whole = client.post("/predict/sentiment", json={"inputs": text, "truncate": False})
        # 300 words take more windows than the six texts the queue holds: no retry can help.
        assert whole.status_code == 413 and "once per window" in whole.json()["error"]["message"]
        fits = client.post(
            "/predict/sentiment", json={"inputs": long_text(80, 2), "truncate": False}
        )
        assert fits.status_code == 200 and fits.json()["windows"] > 1


def test_windows_are_counted_in_metrics(app):
    client = TestClient(app)
    client.post("/predict/ner", json={"inputs": [long_text(150, seed=1), "short"]})
    scrape = client.get("/metrics").text
    assert 'mts_long_texts_total{task="ner"}' in scrape
    assert 'mts_text_windows_count{kind="token-classification"}' in scrape
