"""py-spy profiles of a benchmark's server process, summarised as a table of where time goes.

``record`` samples a running process (py-spy, non-blocking, every thread that is not idle) while a
measurement runs; ``summary`` reads the collapsed stacks and returns, per function, the share of
samples in which it is on the stack (inclusive) and at the top (self).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def record(pid: int, out: Path, seconds: float, rate: int = 100) -> Iterator[None]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.wait(timeout=seconds + 60)


# Thread, event-loop and server plumbing: on every stack, telling nothing.
PLUMBING = {
    "threading.py",
    "thread.py",
    "_asyncio.py",
    "base_events.py",
    "runners.py",
    "server.py",
    "main.py",
    "events.py",
    "_api.py",
    "module.py",
    "<string>",
}


def _function(frame: str) -> str:
    # "name (path/to/file.py:123)" -> "name (file.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


def summary(raw: Path, top: int = 12) -> list[tuple[str, float, float]]:
    """(function, inclusive share, self share) for the ``top`` functions by inclusive share."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";")]
        total += n
        for function in set(frames):
            if function.rpartition("(")[2].rstrip(")") not in PLUMBING:
                inclusive[function] += n
        own[frames[-1]] += n
    return [(f, n / total, own[f] / total) for f, n in inclusive.most_common(top)] if total else []
