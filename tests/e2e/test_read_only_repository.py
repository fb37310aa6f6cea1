"""A repository mounted read-only is served without writes, stale leftovers of writes and all;
a build onto a volume it cannot write says so before any work.

Recent KServe mounts a ``pvc://`` storage URI read-only. Start-up's sweep of interrupted writes'
leftovers (``.staging-*``, ``.*.tmp``) must then leave them, not fail the start. The mount is a
real read-only bind mount (support/readonly.py): chmod would not stop root, which CI runs as.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from support.readonly import read_only, unavailable
from support.servers import free_port, mts_serve, start, stop
from tests.conftest import SERVER_ENV


def test_a_read_only_repository_with_stale_leftovers_starts_and_serves(built_repo, tmp_path):
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no read-only mount for one process here: {reason}")
    repo = tmp_path / "repo"
    shutil.copytree(built_repo, repo)
    # What a writer killed mid-write leaves, an hour old: the sweep's to remove, where it may.
    stale = [repo / ".trunk.json.0123abcd.tmp", repo / "heads" / "topic-zs" / ".staging-dead"]
    stale[0].write_text("{}")
    stale[1].mkdir()
    hour_ago = time.time() - 3600
    for path in stale:
        os.utime(path, (hour_ago, hour_ago))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = start(read_only([repo], mts_serve(repo, port)), url, env=SERVER_ENV, log=log)
    try:
        body = {"tasks": ["topic-zs"], "inputs": ["the market rallied"]}
        reply = httpx.post(f"{url}/predict", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
    finally:
        stop(proc)
    assert all(p.exists() for p in stale)  # never removed: the process could not write
    assert "is read-only here" in log.read_text()


def test_a_build_onto_a_volume_it_cannot_write_says_what_the_volume_must_grant(tmp_path):
    # An NFS export left owned by root is what the build Job meets when nobody set its owner.
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no read-only mount for one process here: {reason}")
    volume = tmp_path / "models"
    volume.mkdir()
    argv = [sys.executable, "-m", "multitask_serve", "build", "--repo", str(volume)]
    done = subprocess.run(
        read_only([volume], [*argv, "--if-outdated", "--no-train"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert f"mts build: cannot write {volume} as uid" in done.stderr
    assert "the volume must be writable by it" in done.stderr
    assert os.listdir(volume) == []
