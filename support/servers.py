"""Server processes for the benchmarks and the tests: the one place that starts a server on a free
loopback port, waits until it is ready and stops it; also its CPU time and memory, from /proc.

A server gets this process's environment without any variable its settings read (``MTS_*``, and
OpenTelemetry's that turn tracing on), plus what the caller passes: its settings are what the
script or test says, never what the shell happened to export.

Imported as ``support.servers`` by the tests and by the benchmarks (``python -m bench.x``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

# How ``mts serve`` runs: this interpreter, the installed package.
MTS = ("-m", "multitask_serve")


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# OpenTelemetry's variables that the settings read (service/settings.py, the traces' endpoint).
OTEL_SETTINGS = frozenset(
    {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"}
)


def read_by_settings(name: str) -> bool:
    """Whether the settings read the environment variable ``name`` (any case, as they do)."""
    return name.upper().startswith("MTS_") or name.upper() in OTEL_SETTINGS


def server_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment less every variable the settings read, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not read_by_settings(k)}
    return {**inherited, **(env or {})}


def mts_serve(repo: Path, port: int, python: Sequence[str] = MTS) -> list[str]:
    """The command line of ``mts serve`` for ``repo`` on ``port``. ``python`` are the
    interpreter's arguments before ``serve``: ``("-c", code)`` runs ``code`` instead, which
    receives ``serve --repo ...`` as its ``sys.argv[1:]``."""
    return [sys.executable, *python, "serve", "--repo", str(repo), "--port", str(port)]


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, timeout: float = 120.0, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; raise if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {tail}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout} s; see {log}")
        time.sleep(0.1)


def start(
    command: Sequence[str],
    url: str,
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
    ready: str = "/readyz",
) -> subprocess.Popen[bytes]:
    """Start ``command``, a server that listens at ``url``, with ``server_env(env)``; return once
    ``url + ready`` answers 200. Its output is appended to ``log``. On failure it is killed."""
    out: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=server_env(env), stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        if not isinstance(out, int):
            out.close()  # the child has its own descriptor
    try:
        wait_ready(proc, url + ready, timeout, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then wait; a process still there after ``timeout`` is killed and it raises."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def start_server(
    repo: Path,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    python: Sequence[str] = MTS,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """``mts serve`` of ``repo`` on a free loopback port, ready; returns the process and its URL.
    The shutdown drain is 0 unless ``env`` says otherwise: these servers are stopped often."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {"MTS_SHUTDOWN_DRAIN_SECONDS": "0", **(env or {})}
    proc = start(
        mts_serve(repo, port, python), url, env=settings, log=log, cwd=cwd, timeout=timeout
    )
    return proc, url


@contextlib.contextmanager
def serving(
    repo: Path,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    python: Sequence[str] = MTS,
    timeout: float = 120.0,
) -> Iterator[str]:
    """``start_server``'s server for the ``with`` block; yields its URL, stops it after."""
    proc, url = start_server(repo, log, env, python=python, timeout=timeout)
    try:
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def serving_copy(
    repo: Path, token: str, env: Mapping[str, str] | None = None, *, prefix: str = "mts-"
) -> Iterator[tuple[str, httpx.Client]]:
    """``serving`` a temporary copy of ``repo`` (so admin calls leave ``repo`` as it was) with
    ``MTS_ADMIN_TOKEN=token``; yields its URL and a client that sends the token. The server log
    is in the copy's temporary directory, named ``prefix...``; both go after the block."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(repo, copy)
        settings = {"MTS_ADMIN_TOKEN": token, **(env or {})}
        with (
            serving(copy, Path(tmp) / "server.log", settings) as url,
            httpx.Client(
                base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}
            ) as admin,
        ):
            yield url, admin


@contextlib.contextmanager
def server(
    name: str,
    command: Sequence[str],
    port: int,
    env: Mapping[str, str] | None = None,
    ready: str = "/readyz",
    log: Path | None = None,
) -> Iterator[Server]:
    """Any server command (ours or a baseline) that listens on ``port``, for the ``with`` block."""
    url = f"http://127.0.0.1:{port}"
    proc = start(command, url, env=env, log=log, timeout=300, ready=ready)
    try:
        yield Server(name, url, proc.pid)
    finally:
        stop(proc)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, all threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float = 60.0, interval: float = 0.25) -> float:
    """Wait until a process stops using CPU (under 10% of a core over ``interval``): a server
    still working through requests a load generator left in flight would take the cores from
    whatever is measured next. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(interval)
        if cpu_seconds(pid) - before < 0.1 * interval:
            break
    return time.monotonic() - started


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def rss_mib(pid: int) -> float:
    """Resident memory of a process now (VmRSS), in MiB."""
    return memory_mb(pid)["VmRSS"]


class Sampler(threading.Thread):
    """VmRSS of ``pid`` every ``interval`` seconds on a thread of its own, as (monotonic time,
    MiB), from ``start()`` until ``stop()`` or the process is gone."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append((time.monotonic(), memory_mb(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def between(self, start: float, end: float) -> list[float]:
        return [rss for t, rss in self.samples if start <= t <= end]

    def peak(self) -> float:
        """The highest sample (MiB)."""
        return max(rss for _, rss in self.samples)
