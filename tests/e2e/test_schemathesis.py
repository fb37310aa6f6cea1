"""``schemathesis run <base>/openapi.json --checks all`` against a real ``mts serve``: every phase
(examples, coverage, fuzzing, stateful), every check, admin routes with the token.

The command is the one a client generator's user would run, from the repository root (so that
``schemathesis.toml`` there applies); what the checks require of the service: every status it
answers is documented with its body's schema, every media type too, valid requests are accepted
and invalid ones refused with a 4xx, an undeclared method gets 405 with ``Allow``, admin routes
refuse requests without the token. Examples per operation are bounded and the seed fixed, so the
run is the same every time and takes about a minute on two cores. ``pytest -s`` prints
schemathesis' summary.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.servers import serving
from tests.conftest import ADMIN_TOKEN, SERVER_ENV

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES = os.environ.get("SCHEMATHESIS_EXAMPLES", "10")


def schemathesis_run(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "all"),
            *("--phases", "examples,coverage,fuzzing,stateful"),
            *("--header", f"Authorization: Bearer {ADMIN_TOKEN}"),
            *("--max-examples", EXAMPLES, "--seed", "0", "--workers", "1"),
            *("--generation-database", "none", "--no-color"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_schemathesis_finds_nothing_in_any_phase_with_every_check(repo: Path, tmp_path: Path):
    with serving(repo, tmp_path / "server.log", SERVER_ENV) as url:
        done = schemathesis_run(url)
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    print(summary)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    cases = re.search(r"Test cases:\s+(\d+) generated", summary)
    assert cases and int(cases.group(1)) > 500, summary
