"""Session-wide fixtures: tiny random-weight encoders, a built repository, head archives."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.export.build import build_repository
from multitask_serve.export.encoder import Encoder, load_encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.trunk import export_trunk
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.app import create_app
from multitask_serve.service.settings import Settings
from tests.factories import NER_LABELS, archive, export_head, write_tiny_encoder

ADMIN_TOKEN = "test-admin-token"
TOPIC_LABELS = {
    "sport": "sport football match team goal",
    "business": "business market bank shares profit company",
    "politics": "politics election minister vote parliament",
}
# What every ``mts serve`` a test starts gets, besides the test's own settings (bench/process.py
# gives a server none of the host's MTS_* variables).
SERVER_ENV = {"MTS_ADMIN_TOKEN": ADMIN_TOKEN, "MTS_INTRA_OP_THREADS": "1"}


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), seed=0)


@pytest.fixture(scope="session")
def other_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape, other weights: a different trunk fingerprint."""
    return write_tiny_encoder(tmp_path_factory.mktemp("other-encoder"), seed=1)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir: Path) -> Encoder:
    return load_encoder(tiny_encoder_dir)


@pytest.fixture(scope="session")
def other_encoder(other_encoder_dir: Path) -> Encoder:
    return load_encoder(other_encoder_dir)


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Encoder) -> Path:
    root = tmp_path_factory.mktemp("built") / "repo"
    build_repository(root, tiny_encoder, {"topic-zs": TOPIC_LABELS}, report=lambda _: None)
    return root


@pytest.fixture(scope="session")
def exporter(tiny_encoder: Encoder, built_repo: Path) -> HeadExporter:
    return HeadExporter(tiny_encoder, ModelRepository(built_repo).read_trunk_spec())


@pytest.fixture(scope="session")
def archives(exporter: HeadExporter, other_encoder: Encoder) -> dict[str, bytes]:
    """Head archives of every trained kind, plus one made against another trunk."""
    foreign_trunk, _ = export_trunk(other_encoder)
    foreign = HeadExporter(other_encoder, foreign_trunk)
    sentiment = ("negative", "neutral", "positive")
    return {
        "sentiment": archive(
            export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=1)
        ),
        "sentiment-v2": archive(
            export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=2)
        ),
        "topic": archive(
            export_head(
                exporter,
                "topic",
                Kind.SEQUENCE_CLASSIFICATION,
                ("business", "politics", "sport"),
                k=2,
                seed=3,
            )
        ),
        "ner": archive(
            export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, k=1, seed=4)
        ),
        "foreign": archive(
            export_head(foreign, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=0, seed=1)
        ),
    }


@pytest.fixture
def repo(built_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the built repository that a test may change."""
    copy = tmp_path / "repo"
    shutil.copytree(built_repo, copy)
    return copy


def make_settings(repo: Path, **overrides: object) -> Settings:
    return Settings(
        repository=repo,
        admin_token=ADMIN_TOKEN,
        intra_op_threads=1,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(repo: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(repo), CollectorRegistry())
    with TestClient(app) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
