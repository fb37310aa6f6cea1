"""`mts serve` as the serving image runs it: no torch, transformers, export/ or training/.

The process starts with those modules made unimportable (``sys.modules[name] = None`` makes
``import name`` raise ImportError), so any import of them on the serving path fails the test.
The measured check in a clean venv holding only ``.[serve]`` is in docs/deploy.md.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from support.servers import start_server, stop

BLOCKED = (
    "torch",
    "transformers",
    "onnxscript",
    "multitask_serve.export",
    "multitask_serve.training",
)


def test_mts_serve_needs_nothing_from_the_train_extra(repo: Path, tmp_path: Path):
    script = (
        "import sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None\n"
        "from multitask_serve.cli import main\n"
        "sys.exit(main())\n"  # serve --repo ... --port ..., from sys.argv
    )
    log = tmp_path / "server.log"
    proc, url = start_server(repo, log, python=("-c", script))
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/predict/topic-zs", json={"inputs": "a goal"}).status_code == 200
            v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
            assert http.post("/v2/models/embed/infer", json=v2).status_code == 200
    finally:
        stop(proc)
    assert "ImportError" not in log.read_text()
