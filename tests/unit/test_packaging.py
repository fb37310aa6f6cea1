"""The distribution installs one import package, and importing it changes nothing global."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_exactly_one_top_level_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("multitask_serve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"multitask_serve", f"{wheel.name.split('-py3')[0]}.dist-info"}
    modules = {name for name in names if name.endswith(".py")}
    for part in ("service/engine.py", "export/trunk.py", "training/train.py", "modelrepo/types.py"):
        assert f"multitask_serve/{part}" in modules
    for part in ("__init__", "common", "serve", "build", "train", "report"):
        assert f"multitask_serve/cli/{part}.py" in modules
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mts = multitask_serve.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_importing_every_part_leaves_the_environment_as_it_was():
    # A library import must not switch anything for the whole process (it once turned the
    # Hugging Face hub off for everyone who imported export/).
    # torch._dynamo sets torch's own default TORCHINDUCTOR_CACHE_DIR when it is first imported
    # (transformers imports it): loaded before the snapshot, so that only our imports count.
    code = (
        "import os, torch._dynamo; before = dict(os.environ); "
        "import multitask_serve.export.build, multitask_serve.training.build, "
        "multitask_serve.service.app, multitask_serve.cli; "
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT.parent)


def test_no_code_imports_the_folders_under_their_own_names():
    # service/, export/, training/ and modelrepo/ are importable only as parts of multitask_serve;
    # an import of the bare name would load a second copy of the module (or a user's own folder).
    # The top-level names are links into multitask_serve/ (docs/architecture.md, "Layout").
    bare = re.compile(r"^\s*(?:from|import)\s+(service|export|training|modelrepo|spec|mts)\b", re.M)
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for folder in ("multitask_serve", "tests", "bench", "support")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for match in bare.finditer(path.read_text())
    ]
    assert offenders == []
