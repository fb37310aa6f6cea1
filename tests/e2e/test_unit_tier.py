"""The unit tier runs without torch and whatever MTS_* variables the host exports.

A fresh interpreter makes the train extra's modules unimportable (``sys.modules[name] = None``
makes ``import name`` raise ImportError) and runs every unit test with pytest, with MTS_*
settings (and OpenTelemetry's endpoint, which turns tracing on) in its environment that would
change results if any test or fixture read them. An
import of torch anywhere on the unit tier's path (a conftest, a fixture, a module under test)
fails the run; a check inside one process cannot tell, since other tiers load torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "transformers", "onnxscript", "safetensors")
HOST = {
    "MTS_MAX_BATCH_TEXTS": "1",
    "MTS_BATCH_MAX_TEXTS": "1",
    "MTS_ADMIN_TOKEN": "a-host-token",
    "mts_log_level": "debug",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
}


def test_the_unit_tier_passes_with_torch_unimportable_and_host_mts_variables_set(tmp_path):
    script = (
        "import sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None\n"
        "import pytest\n"
        "code = pytest.main(sys.argv[1:])\n"
        f"loaded = [m for m in {BLOCKED!r} if sys.modules.get(m) is not None]\n"
        "sys.exit(code or (f'loaded {loaded}' if loaded else 0))\n"
    )
    args = ["-q", "-rs", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'unit'}", "tests/unit"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, **HOST},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    print(out[-2000:])
    assert done.returncode == 0, out[-5000:]
    assert int(re.search(r"(\d+) passed", out).group(1)) > 0
    assert not re.search(r"SKIPPED.*(torch|transformers|onnxscript|safetensors)", out)
