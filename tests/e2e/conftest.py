"""Fixtures for end-to-end tests: a real ``mts serve`` process on loopback (support/servers.py
starts and stops it, for the benchmarks and the tests alike)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.servers import serving
from tests.conftest import SERVER_ENV


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[str]:
    with serving(repo, tmp_path / "server.log", SERVER_ENV) as url:
        yield url
