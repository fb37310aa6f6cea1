"""Head uploads are streamed to a staging file under the upload limit, never buffered whole.

An upload over ``MTS_MAX_UPLOAD_BYTES`` is refused with 413 as soon as the bytes received pass the
limit, whether the length was declared or not, the rest of the body is not read, and nothing is
left behind: no staging file (named, or open and unlinked) and no change to the repository.
``bench/upload_rss.py`` measures the same on a real server's memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.requests import ClientDisconnect

from multitask_serve.service import admin as admin_routes
from multitask_serve.service.app import create_app
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.factories import tree

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads open files from /proc/self/fd"
)

LIMIT = 256 << 10
CHUNK = 16 << 10


def staging_files(repo: Path) -> list[str]:
    """Staged uploads in the repository's root: named ones, and files this process holds open
    there without a name (what the staging file is until it is closed)."""
    root = str(repo.resolve())
    found = [p.name for p in repo.glob(".staging-*")]
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root + "/") and target.endswith(" (deleted)"):
            found.append(target)
    return found


def tasks(client: TestClient) -> list[dict[str, Any]]:
    r = client.get("/tasks")
    assert r.status_code == 200
    return r.json()["tasks"]


class Upload:
    """One POST sent straight to the ASGI app, its body in the given chunks, without a length.

    The body really arrives chunk by chunk (the test client joins a streamed body into one
    message first); ``pulled`` counts the chunks the app asked for.
    """

    def __init__(self, chunks: Iterator[bytes], disconnect_after: int | None = None) -> None:
        self.chunks = chunks
        self.disconnect_after = disconnect_after
        self.pulled = 0
        self.status = 0
        self.body = b""
        self.staged_while_reading: list[str] = []

    def send(self, app: FastAPI, path: str, repo: Path) -> Upload:
        asyncio.run(self._send(app, path, repo))
        return self

    async def _send(self, app: FastAPI, path: str, repo: Path) -> None:
        answered = asyncio.Event()
        exhausted = False
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
                (b"content-type", b"application/gzip"),
                (b"transfer-encoding", b"chunked"),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }

        async def receive() -> dict[str, Any]:
            nonlocal exhausted
            if self.pulled == 2:
                # By now the handler has made its staging file and written into it.
                self.staged_while_reading = staging_files(repo)
            if exhausted or self.pulled == self.disconnect_after:
                if not exhausted:
                    exhausted = True
                    return {"type": "http.disconnect"}
                await answered.wait()
                return {"type": "http.disconnect"}
            chunk = next(self.chunks, None)
            self.pulled += 1
            if chunk is None:
                exhausted = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.body += message.get("body", b"")
                if not message.get("more_body", False):
                    answered.set()

        await app(scope, receive, send)


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def zeros(total: int, size: int = CHUNK) -> Iterator[bytes]:
    """``total`` bytes in chunks, each a fresh object (as a server's reads would be)."""
    for _ in range(total // size):
        yield bytes(size)


@pytest.fixture
def limited(repo: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(repo, max_upload_bytes=LIMIT), CollectorRegistry())
    with TestClient(app) as client:
        yield client


def too_large(status: int, body: dict[str, Any]) -> bool:
    return status == 413 and body == {
        "error": {"code": "too_large", "message": f"request body exceeds {LIMIT} bytes"}
    }


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_upload_over_the_limit_gets_413_and_leaves_nothing_behind(
    limited, admin, repo, declared
):
    files, served = tree(repo), tasks(limited)
    data = os.urandom(4 * LIMIT)
    content: bytes | Iterator[bytes] = data if declared else pieces(data, CHUNK)
    r = limited.post("/admin/heads/sentiment", content=content, headers=admin)
    assert ("content-length" in r.request.headers) is declared
    assert too_large(r.status_code, r.json()), r.text
    assert staging_files(repo) == []
    assert tasks(limited) == served
    assert tree(repo) == files


def test_a_streamed_upload_over_the_limit_is_refused_at_the_limit_and_read_no_further(
    limited, repo
):
    files, served = tree(repo), tasks(limited)
    upload = Upload(zeros(64 * LIMIT)).send(limited.app, "/admin/heads/sentiment", repo)
    assert too_large(upload.status, json.loads(upload.body)), upload.body
    # The chunk that passes the limit is the last one read, of 1024 sent.
    assert upload.pulled == LIMIT // CHUNK + 1
    assert len(upload.staged_while_reading) == 1  # the staging file existed while reading
    assert staging_files(repo) == []
    assert tasks(limited) == served
    assert tree(repo) == files


def test_a_refused_upload_holds_about_one_write_batch_in_memory_not_the_body(repo):
    """With the limit at 16 MiB, a 64 MiB streamed body costs the app less than 4 MiB at peak
    (the old handler, which buffered the body, peaked past the limit)."""
    limit = 16 << 20
    app = create_app(make_settings(repo, max_upload_bytes=limit), CollectorRegistry())
    with TestClient(app):
        tracemalloc.start()
        try:
            upload = Upload(zeros(4 * limit, 64 << 10)).send(app, "/admin/heads/sentiment", repo)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert upload.status == 413
    assert upload.pulled == limit // (64 << 10) + 1
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert staging_files(repo) == []


def test_a_client_that_disconnects_mid_upload_leaves_nothing_behind(limited, repo, archives):
    files, served = tree(repo), tasks(limited)
    upload = Upload(pieces(archives["sentiment"], 100), disconnect_after=5)
    with pytest.raises(ClientDisconnect):  # as before: the app's error handler sees it
        upload.send(limited.app, "/admin/heads/sentiment", repo)
    assert upload.pulled == 5
    assert len(upload.staged_while_reading) == 1
    assert staging_files(repo) == []
    assert tasks(limited) == served
    assert tree(repo) == files


def test_a_valid_archive_still_adds_a_head_and_leaves_no_staging_file(
    client, admin, archives, repo
):
    assert "sentiment" not in {t["task"] for t in tasks(client)}
    r = client.post("/admin/heads/sentiment", content=archives["sentiment"], headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["task"] == "sentiment" and r.json()["version"] == 1
    assert "sentiment" in {t["task"] for t in tasks(client)}
    assert staging_files(repo) == []


def test_a_valid_archive_streamed_in_small_chunks_is_staged_in_batches_and_added(
    client, archives, repo, monkeypatch
):
    data = archives["sentiment"]
    monkeypatch.setattr(admin_routes, "UPLOAD_WRITE_BYTES", 256)  # many batches, one partial
    assert len(data) > 3 * 256 and len(data) % 256
    upload = Upload(pieces(data, 100)).send(client.app, "/admin/heads/sentiment", repo)
    assert upload.status == 201, upload.body
    assert len(upload.staged_while_reading) == 1
    assert "sentiment" in {t["task"] for t in tasks(client)}
    assert staging_files(repo) == []
