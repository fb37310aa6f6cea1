"""Peak resident memory of this process, resettable between runs (Linux ``clear_refs``)."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def reset_peak() -> None:
    """Make the next ``peak_rss_mb`` cover only what happens from now on (where Linux allows)."""
    with contextlib.suppress(OSError):
        _CLEAR.write_text("5")


def peak_rss_mb() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
