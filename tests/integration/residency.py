"""What the tests of heads on demand share: a repository with a head of every kind, a budget that
holds one tiny head, and reading a service's answers and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from multitask_serve.modelrepo.archive import unpack_head
from multitask_serve.modelrepo.repository import ModelRepository

TEXTS = ["john scored a great goal in the final", "the bank rates fell", "ok"]
# Each head counts its graph x 1.04 plus a session's fixed cost (256 KiB), the largest tiny one
# ~350 KB: any one fits, no two do.
ONE_HEAD_MB = 0.5


def add_trained_heads(repo: Path, archives: dict[str, bytes]) -> Path:
    """The built repository (embed, topic-zs) with a head of every trained kind added."""
    store = ModelRepository(repo)
    for name in ("sentiment", "topic", "ner"):
        store.add_head(*unpack_head(archives[name], 1 << 30))
    return repo


def answers(client: TestClient, task: str) -> Any:
    r = client.post(f"/predict/{task}", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    return r.json()


def sample(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    value = client.app.state.services.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0
