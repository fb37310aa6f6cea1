"""Session-wide fixtures: tiny random-weight encoders, a built repository, head archives.

The unit tier needs none of them and must run without torch (tests/e2e/test_unit_tier.py): what
needs torch (tests/factories.py, export/) is imported inside the fixtures that use it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service.app import create_app
from multitask_serve.service.settings import Settings
from support.servers import read_by_settings
from support.tiny import TOPIC_LABELS

if TYPE_CHECKING:
    from multitask_serve.export.encoder import Encoder
    from multitask_serve.export.heads import HeadExporter

ADMIN_TOKEN = "test-admin-token"
# What every ``mts serve`` a test starts gets, besides the test's own settings (support/servers.py
# gives a server none of the host's MTS_* variables).
SERVER_ENV = {"MTS_ADMIN_TOKEN": ADMIN_TOKEN, "MTS_INTRA_OP_THREADS": "1"}


# Instruction sets whose presence changes what the CPU computes or how fast: int8 u8 x s8 products
# (exact with VNNI or AMX, saturating 16-bit pair sums without; the int8 graphs here use u8 x u8,
# exact on all), bf16 autocast (bf16 units, or emulated in fp32 by torch without them). The suite
# passes with and without each; the header says which this run had.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def pytest_report_header() -> str:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [f for f in ISA_FLAGS if f in flags]
    missing = [f for f in ISA_FLAGS if f not in flags]
    return f"cpu: {model}; has {' '.join(have) or '-'}; lacks {' '.join(missing) or '-'}"


@pytest.fixture(autouse=True)
def _no_host_mts_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test sees none of the host's MTS_* variables (the settings read them in any case), nor
    the OpenTelemetry variables that would turn tracing on."""
    for name in list(os.environ):
        if read_by_settings(name):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.tiny import write_tiny_encoder

    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), seed=0)


@pytest.fixture(scope="session")
def other_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape, other weights: a different trunk fingerprint."""
    from support.tiny import write_tiny_encoder

    return write_tiny_encoder(tmp_path_factory.mktemp("other-encoder"), seed=1)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir: Path) -> Encoder:
    from multitask_serve.export.encoder import load_encoder

    return load_encoder(tiny_encoder_dir)


@pytest.fixture(scope="session")
def other_encoder(other_encoder_dir: Path) -> Encoder:
    from multitask_serve.export.encoder import load_encoder

    return load_encoder(other_encoder_dir)


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Encoder) -> Path:
    from multitask_serve.export.build import build_repository

    root = tmp_path_factory.mktemp("built") / "repo"
    build_repository(root, tiny_encoder, {"topic-zs": TOPIC_LABELS}, report=lambda _: None)
    return root


@pytest.fixture(scope="session")
def default_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default encoder's trunk and training-free heads (``mts build --no-train``), built once
    per session: read it, or copy it to change it."""
    from multitask_serve.export.build import build_repository

    root = tmp_path_factory.mktemp("default") / "repo"
    build_repository(root, report=print)
    return root


@pytest.fixture(scope="session")
def exporter(tiny_encoder: Encoder, built_repo: Path) -> HeadExporter:
    from multitask_serve.export.heads import HeadExporter
    from multitask_serve.modelrepo.repository import ModelRepository

    return HeadExporter(tiny_encoder, ModelRepository(built_repo).read_trunk_spec())


@pytest.fixture(scope="session")
def archives(exporter: HeadExporter, other_encoder: Encoder) -> dict[str, bytes]:
    """Head archives of every trained kind, plus one made against another trunk."""
    from tests.factories import head_archives

    return head_archives(exporter, other_encoder)


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
