"""The serving core knows no HTTP, and no route module imports another.

The core (errors, engine, batcher, registry, residency, shadow, sessions, trunk, tokenize,
postprocess, types, pending (the first run's training follower), and the one prediction entry
point, predict) is what every wire format calls; only the HTTP side (routes, oip, admin, limits,
listeners, observability, http_errors, openapi, responses, app, server) may import the web
framework.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "multitask_serve" / "service"
CORE = (
    "errors",
    "engine",
    "batcher",
    "registry",
    "residency",
    "compiled",
    "windows",
    "selection",
    "convergence",
    "shadow",
    "sessions",
    "trunk",
    "tokenize",
    "postprocess",
    "outputs",
    "types",
    "predict",
    "metrics",
    "settings",
    "logs",
    "pending",
    "memory",
    "tracing",
)
HTTP_SIDE = (
    "http_errors",
    "routes",
    "oip",
    "tei",
    "openai_compat",
    "admin",
    "limits",
    "listeners",
    "observability",
    "schemas",
    "listing",
    "state",
    "openapi",
    "responses",
    "app",
    "server",
)
ROUTE_MODULES = ("routes", "oip", "tei", "openai_compat", "admin")
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")


def imported(module: str) -> set[str]:
    """Every module ``service/<module>.py`` imports, as written (absolute names)."""
    tree = ast.parse((SERVICE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def service_modules(names: set[str]) -> set[str]:
    prefix = "multitask_serve.service."
    return {n[len(prefix) :].split(".")[0] for n in names if n.startswith(prefix)}


def test_every_service_module_is_in_one_layer():
    modules = {path.stem for path in SERVICE.glob("*.py")} - {"__init__"}
    assert modules == set(CORE) | set(HTTP_SIDE)


def test_importing_the_core_loads_no_web_framework():
    code = (
        "import sys\n"
        + "".join(f"import multitask_serve.service.{m}\n" for m in CORE)
        + f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {WEB_FRAMEWORKS!r})\n"
        + "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_nothing_of_http(module):
    names = imported(module)
    assert not {n for n in names if n.split(".")[0] in WEB_FRAMEWORKS}
    assert not service_modules(names) & set(HTTP_SIDE)


@pytest.mark.parametrize("module", ROUTE_MODULES)
def test_no_route_module_imports_another(module):
    assert not service_modules(imported(module)) & (set(ROUTE_MODULES) - {module})


def test_the_limits_middleware_imports_no_route_module():
    assert not service_modules(imported("limits")) & set(ROUTE_MODULES)


ROUTE = re.compile(
    r"\b(?:GET|POST|PUT|DELETE|PATCH) /|/(?:predict|tasks|readyz|healthz|admin|v2)\b"
)


@pytest.mark.parametrize("module", CORE)
def test_core_messages_name_no_route(module):
    # Strings the core writes (messages, log lines); docstrings and comments may explain routes.
    tree = ast.parse((SERVICE / f"{module}.py").read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]
    assert [s for s in strings if ROUTE.search(s)] == []
