"""What machine and which library versions a results file was measured with."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The instruction sets that change what int8 and bf16 cost (or, for int8 u8 x s8 products,
# compute): a results file says which of them its CPU had.
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of ``ISA_FLAGS`` this CPU has (Linux; empty elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    return []


def cpu_flavour(flags: list[str]) -> str:
    """vnni (exact u8 x s8 products), avx512-no-vnni or avx2 (saturating ones)."""
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags):
        return "vnni"
    return "avx512-no-vnni" if "avx512bw" in flags else "avx2"


def machine() -> dict[str, Any]:
    """CPU model and instruction sets, cores, Python, the measured libraries' versions and the
    git commit."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in (
        "onnxruntime",
        "torch",
        "transformers",
        "tokenizers",
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "orjson",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
    }
