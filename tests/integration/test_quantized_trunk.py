"""The int8 trunk variant: stored beside the fp32 trunk, served on request, heads still accepted.

Tolerances for the tiny random encoder, int8 vs fp32 through the whole service: embeddings keep a
cosine of at least 0.999 and class probabilities move by at most 0.02 (measured: see the printed
figures; the real encoder's quality change is in BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.cli import main as mts
from multitask_serve.export.quantize import INT8, METHOD, MIN_COSINE
from multitask_serve.modelrepo.repository import ModelRepository, RepositoryError
from multitask_serve.service.app import create_app
from tests.conftest import make_settings
from tests.factories import TINY_LAYERS

TEXTS = ["john scored a great goal in the final", "the bank rates fell", "i love paris"]
EMBEDDING_MIN_COSINE = 0.999
PROBABILITY_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def quantized_repo(built_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quantized") / "repo"
    shutil.copytree(built_repo, root)
    assert mts(["--log-level", "warning", "quantize", "--repo", str(root)]) == 0
    return root


@pytest.fixture
def quantized(quantized_repo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(quantized_repo, copy)
    return copy


def serve(repo: Path, precision: str) -> TestClient:
    return TestClient(
        create_app(make_settings(repo, trunk_precision=precision), CollectorRegistry())
    )


def test_quantizing_adds_an_int8_graph_and_keeps_the_fp32_fingerprint(built_repo, quantized_repo):
    before = ModelRepository(built_repo).read_trunk_spec()
    repo = ModelRepository(quantized_repo)
    after = repo.read_trunk_spec()
    assert after.fingerprint == before.fingerprint
    assert (
        repo.trunk_model_path.read_bytes()
        == ModelRepository(built_repo).trunk_model_path.read_bytes()
    )
    variant = after.variants[INT8]
    assert variant.fingerprint != after.fingerprint and variant.min_cosine >= MIN_COSINE
    graph = onnx.load(repo.trunk_variant_path(INT8))
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    # Q, K, V, attention output and the two feed-forward weights of every layer; the embedding
    # tables (word, position, token type) are int8 rows scaled after the lookup.
    assert ops["MatMulIntegerToFloat"] == 6 * TINY_LAYERS
    assert ops["MatMul"] == 2 * TINY_LAYERS  # attention's scores and context stay fp32
    fp32_matrices = [
        t.name
        for t in graph.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) > 1
    ]
    assert not fp32_matrices, f"weights left fp32: {fp32_matrices}"
    print(
        f"int8 trunk taps vs fp32: max abs diff {variant.max_abs_diff:.2e}, "
        f"min cosine {variant.min_cosine:.6f}"
    )


def test_int8_trunk_serves_every_head_close_to_fp32(quantized, admin, archives):
    outputs: dict[str, dict] = {}
    for precision in ("fp32", INT8):
        with serve(quantized, precision) as client:
            for name in ("sentiment", "topic", "ner"):
                if precision == "fp32":
                    r = client.post(f"/admin/heads/{name}", content=archives[name], headers=admin)
                    assert r.status_code == 201, r.text
            served = {t["task"] for t in client.get("/tasks").json()["tasks"]}
            assert {"sentiment", "topic", "ner", "embed", "topic-zs"} <= served
            r = client.post("/predict", json={"inputs": TEXTS, "tasks": sorted(served)})
            assert r.status_code == 200, r.text
            outputs[precision] = r.json()
    fp32, int8 = outputs["fp32"], outputs[INT8]
    a, b = np.array(fp32["embed"]["outputs"]), np.array(int8["embed"]["outputs"])
    cosine = float((a * b).sum(-1).min())  # unit vectors
    probs = max(
        abs(x["scores"][label] - y["scores"][label])
        for task in ("sentiment", "topic", "topic-zs")
        for x, y in zip(fp32[task]["outputs"], int8[task]["outputs"], strict=True)
        for label in x["scores"]
    )
    print(
        f"int8 vs fp32 served: embedding cosine >= {cosine:.6f}, probabilities within {probs:.2e}"
    )
    assert cosine >= EMBEDDING_MIN_COSINE
    assert probs <= PROBABILITY_TOLERANCE
    assert len(int8["ner"]["outputs"]) == len(TEXTS)


def test_an_int8_trunk_answers_a_text_as_it_answers_it_alone(quantized, admin, archives):
    """Activations are scaled per row: a text's answer does not move with its batch companions
    (per-batch scales moved the real trunk's taps by up to 0.92)."""
    texts = [*TEXTS, "a much longer text than the others, so that every other one is padded"]
    with serve(quantized, INT8) as client:
        r = client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
        assert r.status_code == 201, r.text
        tasks = ["embed", "sentiment", "topic-zs"]
        batched = client.post("/predict", json={"inputs": texts, "tasks": tasks}).json()
        for i, text in enumerate(texts):
            alone = client.post("/predict", json={"inputs": [text], "tasks": tasks}).json()
            a, b = alone["embed"]["outputs"][0], batched["embed"]["outputs"][i]
            assert np.allclose(a, b, atol=1e-5)
            for task in ("sentiment", "topic-zs"):
                x, y = alone[task]["outputs"][0], batched[task]["outputs"][i]
                assert x["label"] == y["label"]
                assert x["scores"] == pytest.approx(y["scores"], abs=1e-5)


def test_a_head_uploaded_to_an_int8_service_is_accepted(quantized, admin, archives):
    with serve(quantized, INT8) as client:
        r = client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
        assert r.status_code == 201, r.text
        # Still validated against the fp32 fingerprint: a head of another trunk is refused.
        foreign = archives["foreign"]
        r = client.post("/admin/heads/sentiment?replace=true", content=foreign, headers=admin)
        assert r.status_code == 409, r.text
        assert client.post("/predict/sentiment", json={"inputs": "good"}).status_code == 200


def test_serving_a_precision_the_repository_lacks_names_the_command_that_makes_it(repo):
    with pytest.raises(RepositoryError, match=r"no int8 trunk .*mts quantize"):
        create_app(make_settings(repo, trunk_precision=INT8), CollectorRegistry())


def test_an_int8_graph_that_does_not_match_trunk_json_is_refused(quantized):
    path = ModelRepository(quantized).trunk_variant_path(INT8)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(RepositoryError, match="does not match the int8 fingerprint"):
        create_app(make_settings(quantized, trunk_precision=INT8), CollectorRegistry())
    # The fp32 trunk does not depend on the variant.
    with serve(quantized, "fp32") as client:
        assert client.get("/readyz").status_code == 200


def test_quantizing_twice_is_refused_and_changes_nothing(quantized):
    trunk_json = (quantized / "trunk" / "trunk.json").read_bytes()
    with pytest.raises(RepositoryError, match="already has an 'int8' trunk variant"):
        mts(["--log-level", "warning", "quantize", "--repo", str(quantized)])
    assert (quantized / "trunk" / "trunk.json").read_bytes() == trunk_json


def test_quantizing_replaces_a_variant_made_by_the_per_batch_method(quantized):
    """A repository quantized before per-row scales keeps serving its graph until
    `mts quantize` replaces it; trunk.json never names a missing or partial file."""
    repo = ModelRepository(quantized)
    spec = repo.read_trunk_spec()
    old = dataclasses.replace(spec.variants[INT8], method="onnxruntime quantize_dynamic")
    old_spec = dataclasses.replace(spec, variants={INT8: old})
    (quantized / "trunk" / "trunk.json").write_bytes(old_spec.to_json().encode())
    old_path = repo.trunk_variant_path(INT8)
    assert mts(["--log-level", "warning", "quantize", "--repo", str(quantized)]) == 0
    new = repo.read_trunk_spec().variants[INT8]
    assert new.method == METHOD and new.file != old.file
    assert not old_path.exists() and repo.trunk_variant_path(INT8).is_file()
    with serve(quantized, INT8) as client:
        assert client.post("/predict/topic-zs", json={"inputs": TEXTS}).status_code == 200


def test_an_int8_trunk_made_before_u8_x_u8_products_is_served_with_a_warning(quantized, caplog):
    """A variant whose method does not say its products are exact ran the u8 x s8 kernel, wrong
    on x86 without VNNI: the service still serves it (it is the operator's graph) and says how to
    replace it; the current method's graph loads without that warning."""
    with caplog.at_level("WARNING", logger="multitask_serve.service.app"):
        create_app(make_settings(quantized, trunk_precision=INT8), CollectorRegistry())
    assert not [r for r in caplog.records if "saturate" in r.getMessage()]
    repo = ModelRepository(quantized)
    spec = repo.read_trunk_spec()
    old_method = (
        "per-row int8: per-channel int8 weights, int8 activations scaled per row at run time"
    )
    old = dataclasses.replace(spec.variants[INT8], method=old_method)
    (quantized / "trunk" / "trunk.json").write_text(
        dataclasses.replace(spec, variants={INT8: old}).to_json()
    )
    with caplog.at_level("WARNING", logger="multitask_serve.service.app"):
        create_app(make_settings(quantized, trunk_precision=INT8), CollectorRegistry())
    [warning] = [r.getMessage() for r in caplog.records if "saturate" in r.getMessage()]
    assert old_method in warning and f"mts quantize --repo {quantized}" in warning
