"""int8 heads: made at export, by ``mts train --head-precision int8`` or ``mts quantize --head``
(a stored version or an archive), recorded in head.json and served like any other head.

Tolerance for the tiny random encoder's heads, int8 vs fp32 through the whole service: class
probabilities move by at most ``MAX_PROBABILITY_CHANGE`` (the export check's own bound; the
printed figure is the measured one). The real heads' quality change is in BENCHMARKS.md.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
from pathlib import Path
from typing import Any

import onnx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.cli import main as mts
from multitask_serve.export import quantize
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.quantize import INT8, MAX_PROBABILITY_CHANGE, QuantizationError
from multitask_serve.modelrepo.archive import pack_head, unpack_head
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import HeadSpec, Kind
from multitask_serve.service.app import create_app
from multitask_serve.training.build import build_with_heads
from multitask_serve.training.train import TrainConfig
from tests.conftest import make_settings
from tests.factories import NER_LABELS, PROBES, random_head

SENTIMENT = ("negative", "neutral", "positive")


def heads(
    exporter: HeadExporter, kind: Kind, labels: tuple[str, ...], task: str
) -> dict[str, tuple[HeadSpec, bytes]]:
    """The fp32 and int8 exports of one top-2 head (same weights)."""
    head = random_head(exporter.encoder, kind, len(labels), k=2, seed=7)
    training = {"strategy": "top-2", "seed": 7}
    return {
        p: exporter.classification(task, head, labels, training, precision=p)
        for p in ("fp32", INT8)
    }


def weight_matmuls(model: bytes) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in onnx.load_from_string(model).graph.node)


def test_an_int8_export_quantizes_the_heads_own_layers_and_records_its_precision(exporter):
    made = heads(exporter, Kind.SEQUENCE_CLASSIFICATION, SENTIMENT, "sentiment")
    (fp32_spec, fp32), (spec, model) = made["fp32"], made[INT8]
    assert fp32_spec.precision == "fp32" and spec.precision == INT8
    # Q, K, V, attention output and the two feed-forward weights of both layers, and the classifier.
    assert weight_matmuls(model)["MatMulIntegerToFloat"] == 6 * 2 + 1
    assert weight_matmuls(fp32)["MatMulIntegerToFloat"] == 0
    assert len(model) < len(fp32)
    figures = spec.training["quantization"]
    print(f"int8 tiny head vs fp32 on the sample taps: {figures}")
    assert figures["probability_max_abs_diff"] <= MAX_PROBABILITY_CHANGE
    assert spec.parity_max_abs_diff == figures["logits_max_abs_diff"] > 0
    assert figures["reference_parity_max_abs_diff"] == fp32_spec.parity_max_abs_diff
    assert spec.trunk_fingerprint == fp32_spec.trunk_fingerprint
    assert HeadSpec.from_json(spec.to_json()) == spec


def test_int8_heads_are_served_through_predict_close_to_their_fp32_heads(repo, admin, exporter):
    made = {
        "sentiment": heads(exporter, Kind.SEQUENCE_CLASSIFICATION, SENTIMENT, "sentiment"),
        "ner": heads(exporter, Kind.TOKEN_CLASSIFICATION, NER_LABELS, "ner"),
    }
    app = create_app(make_settings(repo), CollectorRegistry())
    with TestClient(app) as client:
        for task, by_precision in made.items():
            for precision, (spec, model) in by_precision.items():
                name = f"{task}-{precision}"
                archive = pack_head(dataclasses.replace(spec, task=name), model)
                r = client.post(f"/admin/heads/{name}", content=archive, headers=admin)
                assert r.status_code == 201, r.text
        tasks = sorted(f"{t}-{p}" for t in made for p in ("fp32", INT8))
        r = client.post("/predict", json={"inputs": PROBES, "tasks": tasks})
        assert r.status_code == 200, r.text
        got = r.json()
        alone = {
            task: [
                client.post(f"/predict/{task}", json={"inputs": t}).json()["outputs"]
                for t in PROBES
            ]
            for task in ("sentiment-fp32", "sentiment-int8", "ner-int8")
        }
    fp32, int8 = got["sentiment-fp32"]["outputs"], got["sentiment-int8"]["outputs"]
    moved = max_moved(fp32, int8)
    # Activations are scaled per row, so an int8 head's answer for a text is the answer it gets
    # alone, as an fp32 head's is (per-batch scales moved it by up to 0.24 on the real heads).
    by_batch = {
        p: max_moved(alone[f"sentiment-{p}"], got[f"sentiment-{p}"]["outputs"])
        for p in ("fp32", INT8)
    }
    print(
        f"served int8 vs fp32 sentiment head: probabilities within {moved:.2e}; alone vs "
        f"batched: fp32 {by_batch['fp32']:.2e}, int8 {by_batch[INT8]:.2e}"
    )
    assert moved <= MAX_PROBABILITY_CHANGE
    assert by_batch["fp32"] <= 1e-5 and by_batch[INT8] <= 1e-5
    assert len(got["ner-int8"]["outputs"]) == len(PROBES)
    assert all(isinstance(spans, list) for spans in alone["ner-int8"])


def test_an_int8_head_made_before_u8_x_u8_products_is_served_with_a_warning(
    repo, admin, exporter, caplog
):
    spec, model = heads(exporter, Kind.SEQUENCE_CLASSIFICATION, SENTIMENT, "sentiment")[INT8]
    quantization = spec.training["quantization"]
    old_method = "per-row int8 of the head's own MatMuls: per-channel weights, per-row activations"
    old = dataclasses.replace(
        spec,
        task="sentiment-old",
        training={**spec.training, "quantization": {**quantization, "method": old_method}},
    )
    app = create_app(make_settings(repo), CollectorRegistry())
    with (
        TestClient(app) as client,
        caplog.at_level("WARNING", logger="multitask_serve.service.registry"),
    ):
        current = pack_head(dataclasses.replace(spec, task="sentiment-new"), model)
        assert client.post("/admin/heads/sentiment-new", content=current, headers=admin).is_success
        assert not [r for r in caplog.records if "saturate" in r.getMessage()]
        r = client.post("/admin/heads/sentiment-old", content=pack_head(old, model), headers=admin)
        assert r.status_code == 201, r.text
    [warning] = [r.getMessage() for r in caplog.records if "saturate" in r.getMessage()]
    assert "'sentiment-old'" in warning and "mts quantize --head" in warning


def max_moved(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Largest change of a class probability between two lists of classification results."""
    return max(
        abs(x["scores"][label] - y["scores"][label])
        for x, y in zip(a, b, strict=True)
        for label in x["scores"]
    )


@pytest.fixture
def with_fp32_head(repo: Path, exporter: HeadExporter) -> Path:
    spec, model = heads(exporter, Kind.SEQUENCE_CLASSIFICATION, SENTIMENT, "sentiment")["fp32"]
    ModelRepository(repo).add_head(spec, model)
    return repo


def quantize_cli(*args: str) -> int:
    return mts(["--log-level", "warning", "quantize", *args])


def test_mts_quantize_head_stores_an_int8_version_and_rollback_serves_fp32_again(
    with_fp32_head, admin
):
    repo = ModelRepository(with_fp32_head)
    assert quantize_cli("--repo", str(with_fp32_head), "--head", "sentiment") == 0
    stored = repo.read_head("sentiment")
    assert (stored.version, stored.spec.precision) == (2, INT8)
    assert repo.read_head("sentiment", 1).spec.precision == "fp32"
    with pytest.raises(SystemExit, match="already int8; quantize its fp32 version"):
        quantize_cli("--repo", str(with_fp32_head), "--head", "sentiment")
    assert (
        quantize_cli(
            "--repo", str(with_fp32_head), "--head", "sentiment", "--version", "1", "--keep-current"
        )
        == 0
    )
    assert repo.versions("sentiment") == [1, 2, 3] and repo.current_version("sentiment") == 2
    with TestClient(create_app(make_settings(with_fp32_head), CollectorRegistry())) as client:
        listed = client.get("/admin/heads/sentiment/versions", headers=admin).json()
        assert [v["precision"] for v in listed["versions"]] == ["fp32", INT8, INT8]
        r = client.post("/admin/heads/sentiment/rollback", json={"version": 1}, headers=admin)
        assert r.status_code == 200, r.text
        assert client.post("/predict/sentiment", json={"inputs": "good"}).status_code == 200
    assert repo.current_version("sentiment") == 1


def test_heads_without_trained_weights_are_not_quantized_and_nothing_is_stored(with_fp32_head):
    repo = ModelRepository(with_fp32_head)
    before = repo.versions("embed")
    with pytest.raises(SystemExit, match=r"embedding.*no trained weights"):
        quantize_cli("--repo", str(with_fp32_head), "--head", "embed")
    assert repo.versions("embed") == before


def test_an_int8_copy_that_strays_beyond_the_tolerance_is_refused(
    with_fp32_head, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(quantize, "MAX_PROBABILITY_CHANGE", 0.0)
    with pytest.raises(SystemExit, match=r"moves a probability by .* above 0\.0; not stored"):
        quantize_cli("--repo", str(with_fp32_head), "--head", "sentiment")
    assert ModelRepository(with_fp32_head).versions("sentiment") == [1]


def test_mts_quantize_converts_an_archive_for_the_repositorys_trunk(repo, archives, tmp_path):
    source, out = tmp_path / "in.tar.gz", tmp_path / "out.tar.gz"
    source.write_bytes(archives["topic"])
    assert quantize_cli("--repo", str(repo), "--archive", str(source), "--out", str(out)) == 0
    spec, model = unpack_head(out.read_bytes(), 1 << 30)
    assert spec.precision == INT8 and weight_matmuls(model)["MatMulIntegerToFloat"] > 0
    # A head of another trunk cannot be checked against this trunk's taps.
    source.write_bytes(archives["foreign"])
    with pytest.raises(SystemExit, match=r"was made for trunk .* cannot check the copy"):
        quantize_cli("--repo", str(repo), "--archive", str(source), "--out", str(out))
    with pytest.raises(SystemExit, match=r"--archive IN\.tar\.gz with --out"):
        quantize_cli("--repo", str(repo), "--archive", str(source))


def test_quantize_head_refuses_an_int8_head(exporter):
    spec, model = heads(exporter, Kind.SEQUENCE_CLASSIFICATION, SENTIMENT, "sentiment")[INT8]
    with pytest.raises(QuantizationError, match="already int8"):
        quantize.quantize_head(spec, model, exporter.head_samples(spec.branch_layer))


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    data = tmp_path / "reviews.csv"
    with data.open("w", newline="") as f:
        csv.writer(f).writerows(
            [("text", "label")]
            + [(f"the film was great {i}", "pos") for i in range(20)]
            + [(f"the film was awful {i}", "neg") for i in range(20)]
        )
    return data


def test_mts_train_head_precision_int8_writes_an_int8_archive(
    repo, tiny_encoder_dir, tmp_path, reviews
):
    out = tmp_path / "reviews.tar.gz"
    args = ["--task", "reviews", "--data", str(reviews), "--strategy", "top-1", "--repo", str(repo)]
    args += ["--encoder", str(tiny_encoder_dir), "--epochs", "1", "--max-length", "16"]
    assert (
        mts(["--log-level", "warning", "train", *args, "--head-precision", INT8, "--out", str(out)])
        == 0
    )
    spec, model = unpack_head(out.read_bytes(), 1 << 30)
    assert spec.precision == INT8 and spec.branch_layer == 5
    assert weight_matmuls(model)["MatMulIntegerToFloat"] == 6 + 1
    assert spec.training["strategy"] == "top-1" and "quantization" in spec.training


def test_a_build_with_int8_heads_stores_its_trained_heads_as_int8(tiny_encoder, tmp_path, reviews):
    config = TrainConfig(task="reviews", data=str(reviews), strategy="top-1", epochs=1)
    root = tmp_path / "built"
    build_with_heads(root, tiny_encoder, (config,), lambda _: None, head_precision=INT8)
    repo = ModelRepository(root)
    assert repo.read_head("reviews").spec.precision == INT8
    assert repo.read_head("embed").spec.precision == "fp32"  # nothing of its own to quantize
