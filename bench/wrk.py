"""HTTP load from wrk, a compiled load generator: the client does not eat the server's cores.

``run`` drives one server with ``connections`` open connections (one request outstanding on each:
a closed loop at that concurrency) for ``seconds``, cycling through the given requests, and returns
wrk's own counts and latency percentiles. The requests are written into a Lua script that wrk
loads; its ``done`` hook prints one JSON line, which is all this module reads of wrk's output.

    apt-get install wrk    # Debian's package
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A request: path and JSON body, and how many texts it carries.
Request = tuple[str, dict[str, Any], int]

_SCRIPT = """
local requests = {%s}
local i = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  i = i %% #requests + 1
  return wrk.format("POST", requests[i][1], headers, requests[i][2])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "bytes": %%d, "non_2xx": %%d, "socket_errors": %%d, '
    .. '"latency_us": {"p50": %%.1f, "p90": %%.1f, "p99": %%.1f, "mean": %%.1f, "max": %%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    texts: int
    non_2xx: int
    socket_errors: int
    latency_ms: dict[str, float]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "texts_per_s": round(self.texts_per_s, 2),
            "requests_per_s": round(self.requests_per_s, 2),
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "latency_ms": self.latency_ms,
        }


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str, requests: list[Request], seconds: float, connections: int, threads: int = 1
) -> Result:
    """wrk against ``url`` with these requests in turn; a non-2xx answer or socket error raises."""
    if not available():
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    if len({texts for _, _, texts in requests}) != 1:
        raise ValueError("every request of one run must carry the same number of texts")
    bodies = ", ".join(
        "{" + _lua_string(path) + ", " + _lua_string(json.dumps(body)) + "}"
        for path, body, _ in requests
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_SCRIPT % bodies)
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(threads, connections)}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "30s",
                "-s",
                script.name,
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        Path(script.name).unlink()
    line = next(line for line in out.splitlines() if line.startswith('{"requests"'))
    data = json.loads(line)
    result = Result(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        texts=data["requests"] * requests[0][2],
        non_2xx=data["non_2xx"],
        socket_errors=data["socket_errors"],
        latency_ms={k: round(v / 1000, 3) for k, v in data["latency_us"].items()},
    )
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(
            f"wrk saw {result.non_2xx} non-2xx answers and {result.socket_errors} socket errors "
            f"from {url}: {out}"
        )
    return result
