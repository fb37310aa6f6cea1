"""The repository's tooling: tests/ and bench/ share support/, and neither imports the other.

support/ (servers, machine, statistics, results files, the tiny encoder, the crash loop) imports
neither; a benchmark imports other benchmarks as ``bench.x`` and runs as ``python -m bench.x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Which top-level tooling packages each folder may import.
ALLOWED = {"tests": {"tests", "support"}, "bench": {"bench", "support"}, "support": {"support"}}
TOOLING = set(ALLOWED)


def imported_roots(path: Path) -> set[str]:
    """The first part of every absolute module name ``path`` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_tooling_imports_only_what_its_layer_may(folder: str):
    offenders = {
        str(path.relative_to(ROOT)): sorted((imported_roots(path) & TOOLING) - ALLOWED[folder])
        for path in sorted((ROOT / folder).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_bench_scripts_import_bench_modules_by_their_package_name():
    # A bare ``from loadgen import ...`` works only when run as ``python bench/x.py``.
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}
    bare = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & scripts)
        for path in sorted((ROOT / "bench").glob("*.py"))
    }
    assert {path: names for path, names in bare.items() if names} == {}
