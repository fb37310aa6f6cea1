"""Server memory while a head upload over the limit is refused, and while one near it is accepted.

Starts a real ``mts serve`` (from ``--code``, a checkout, by default this one) on a copy of a
repository (``--repo``; by default a tiny one built like the tests' fixture) with
``MTS_MAX_UPLOAD_BYTES`` at ``--limit-mib``, then:

1. refused: sends a ``--body-mib`` body to ``POST /admin/heads/<task>`` chunked, without a
   Content-Length (so the declared-length check cannot refuse it before it is read), streamed
   from a generator;
2. accepted (``--accept-mib``, 0 skips it): sends a valid head archive (the repository's largest
   head under a new task name) followed by padding up to that size, also chunked. The unpacker
   stops at the archive's end, so the head is added; the body is still received whole.

Meanwhile a thread samples the server's VmRSS from /proc every ``--interval`` seconds. For each
phase: RSS just before, the highest sample during, RSS one second after the answer, the status
and the seconds to the answer. Results are merged under ``--label`` into ``--out``, so runs of two
checkouts land side by side:

    git worktree add /tmp/upload-before <commit>
    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.upload_rss --code /tmp/upload-before \\
        --label before --out bench/results/upload-rss.json
    flock /tmp/mts-cpu.lock .venv/bin/python -m bench.upload_rss --label after \\
        --out bench/results/upload-rss.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.repository import ModelRepository
from support.results import read_results, write_results
from support.servers import Sampler, memory_mb, server_env, start_server, stop
from support.tiny import tiny_repository

TOKEN = "upload-rss-token"
MIB = 1 << 20


def body(total: int, chunk: int, head: bytes = b"") -> Iterator[bytes]:
    """``head`` then zeros, ``total`` bytes in all, in chunks of ``chunk`` (one reused buffer)."""
    yield head
    sent, zeros = len(head), bytes(chunk)
    while sent < total:
        piece = zeros if total - sent >= chunk else zeros[: total - sent]
        yield piece
        sent += len(piece)


def phase(
    client: httpx.Client,
    sampler: Sampler,
    path: str,
    content: Iterator[bytes],
    total: int,
    settle: float,
) -> dict[str, Any]:
    time.sleep(settle)
    start = time.monotonic()
    before = sampler.between(start - settle / 2, start)
    r = client.post(path, content=content, headers={"Content-Type": "application/gzip"})
    answered = time.monotonic()
    assert "content-length" not in r.request.headers  # sent chunked: the limit must be counted
    time.sleep(settle)
    during = sampler.between(start, answered)
    after = sampler.between(answered + settle / 2, answered + settle)
    try:
        answer = r.json().get("error", {}).get("code") or r.json()
    except (ValueError, AttributeError):
        answer = r.text[:200]
    return {
        "body_mib": round(total / MIB, 1),
        "transfer_encoding": r.request.headers.get("transfer-encoding"),
        "status": r.status_code,
        "answer": answer,
        "seconds": round(answered - start, 2),
        "rss_mib": {
            "before": round(before[-1], 1),
            "peak": round(max(during, default=before[-1]), 1),
            "after": round(after[-1], 1),
        },
        "samples": len(during),
    }


def imported_from(code: Path, env: dict[str, str]) -> str:
    """Where the server's admin module comes from, with the server's cwd and environment."""
    out = subprocess.run(
        [sys.executable, "-c", "import multitask_serve.service.admin as m; print(m.__file__)"],
        cwd=code,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def describe(code: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(code), "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "unknown"


def measure(args: argparse.Namespace, source: Path, workdir: Path) -> dict[str, Any]:
    code = args.code.resolve()
    root = workdir / "served"
    shutil.copytree(source, root)
    repo = ModelRepository(root)
    largest = max(repo.tasks(), key=lambda t: repo.read_head(t).model_path.stat().st_size)
    stored = repo.read_head(largest)
    archive = pack_head(
        dataclasses.replace(stored.spec, task="upload-rss"), stored.model_path.read_bytes()
    )
    limit = args.limit_mib * MIB
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])),
        "MTS_ADMIN_TOKEN": TOKEN,
        "MTS_MAX_UPLOAD_BYTES": str(limit),
        "MTS_INTRA_OP_THREADS": "1",
        "MTS_LOG_LEVEL": "warning",
    }
    origin = imported_from(code, server_env(env))
    assert Path(origin).resolve().is_relative_to(code), f"{code} is not what runs: {origin}"
    proc, url = start_server(root, workdir / "server.log", env, cwd=code)
    try:
        sampler = Sampler(proc.pid, args.interval)
        sampler.start()
        chunk = args.chunk_kib << 10
        with httpx.Client(
            base_url=url, timeout=600, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            tasks = client.get("/tasks").json()["tasks"]
            total = args.body_mib * MIB
            result: dict[str, Any] = {
                "code": describe(code),
                "refused": phase(
                    client, sampler, "/admin/heads/upload-rss", body(total, chunk), total, 1.0
                ),
                "tasks_unchanged_after_refusal": client.get("/tasks").json()["tasks"] == tasks,
            }
            if args.accept_mib:
                total = args.accept_mib * MIB
                accepted = phase(
                    client,
                    sampler,
                    "/admin/heads/upload-rss",
                    body(total, chunk, archive),
                    total,
                    1.0,
                )
                accepted["archive_bytes"] = len(archive)
                result["accepted"] = accepted
        sampler.stop()
        result["server_vmhwm_mib"] = round(memory_mb(proc.pid)["VmHWM"], 1)
        leftovers = [p.name for p in root.glob(".staging-*")]
        leftovers += [p.name for p in root.glob("heads/*/.staging-*")]
        result["staging_entries_left"] = leftovers
        return result
    finally:
        stop(proc)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, help="copied, never changed (default: a tiny one)")
    p.add_argument("--code", type=Path, default=Path("."), help="the checkout whose server runs")
    p.add_argument("--label", default="this checkout", help="the key of this run in --out")
    p.add_argument("--out", type=Path, help="JSON file to merge this run into")
    p.add_argument("--body-mib", type=int, default=400, help="size of the refused upload")
    p.add_argument("--limit-mib", type=int, default=300, help="MTS_MAX_UPLOAD_BYTES, in MiB")
    p.add_argument("--accept-mib", type=int, default=280, help="size of the accepted upload")
    p.add_argument("--chunk-kib", type=int, default=64, help="client write size")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between RSS samples")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="upload-rss-") as tmp:
        workdir = Path(tmp)
        source = args.repo or tiny_repository(workdir / "tiny")
        result = measure(args, source, workdir)
    print(json.dumps(result, indent=2))
    if args.out:
        merged = read_results(args.out, {"runs": {}})
        merged["settings"] = {
            "repository": str(args.repo) if args.repo else "tiny (support/tiny.py)",
            "limit_mib": args.limit_mib,
            "refused_body_mib": args.body_mib,
            "accepted_body_mib": args.accept_mib,
            "client_chunk_kib": args.chunk_kib,
            "rss_interval_s": args.interval,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        merged["runs"][args.label] = result
        write_results(args.out, merged, indent=2)


if __name__ == "__main__":
    main()
