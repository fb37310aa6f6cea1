"""When traces are on and where they go: OpenTelemetry's standard variables or MTS_ settings, read
by the one settings object; off, nothing of OpenTelemetry is imported.

The spans themselves are tests/integration/test_tracing.py's (they need the tracing extra's SDK,
which this tier does without).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from multitask_serve.service.settings import Settings

BASE = "http://collector.observability:4318"


def test_tracing_is_off_by_default_and_when_the_endpoints_are_blank(monkeypatch, tmp_path: Path):
    assert Settings(repository=tmp_path).traces_endpoint is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")  # a ConfigMap's value left blank
    monkeypatch.setenv("MTS_OTLP_TRACES_ENDPOINT", "")
    assert Settings(repository=tmp_path).traces_endpoint is None


def test_opentelemetrys_variables_turn_tracing_on_and_its_traces_endpoint_wins(
    monkeypatch, tmp_path: Path
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", BASE + "/")
    assert Settings(repository=tmp_path).traces_endpoint == BASE + "/v1/traces"
    monkeypatch.setenv("otel_exporter_otlp_traces_endpoint", BASE + "/custom/path")
    assert Settings(repository=tmp_path).traces_endpoint == BASE + "/custom/path"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # OpenTelemetry's own off switch
    assert Settings(repository=tmp_path).traces_endpoint is None


def test_an_mts_setting_names_the_endpoint_too_and_wins_over_the_otel_variable(
    monkeypatch, tmp_path: Path
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318")
    monkeypatch.setenv("MTS_OTLP_ENDPOINT", BASE)
    assert Settings(repository=tmp_path).traces_endpoint == BASE + "/v1/traces"
    passed = Settings(repository=tmp_path, otlp_traces_endpoint="https://x.example/v1/traces")
    assert passed.traces_endpoint == "https://x.example/v1/traces"


@pytest.mark.parametrize("url", ["collector:4318", "grpc://collector:4317", "http://"])
def test_an_endpoint_that_is_no_http_url_is_refused_at_start(tmp_path: Path, url: str):
    with pytest.raises(ValidationError, match="http:// or https:// URL"):
        Settings(repository=tmp_path, otlp_endpoint=url)


def test_with_tracing_off_the_serving_core_imports_nothing_of_opentelemetry(tmp_path: Path):
    # The request path's modules with their hooks, and the decision itself; fastapi (not
    # imported here) brings the API, but never the SDK, which only an endpoint imports.
    code = (
        "import sys\n"
        "from multitask_serve.service import batcher, engine, predict, tracing\n"
        "from multitask_serve.service.settings import Settings\n"
        f"assert tracing.Tracing.from_settings(Settings(repository={str(tmp_path)!r})) is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_endpoint_without_the_sdk_installed_logs_why_and_serving_goes_on(tmp_path: Path):
    code = (
        "import logging, sys\n"
        "sys.modules['opentelemetry.sdk'] = None  # as where the tracing extra is not installed\n"
        "logging.basicConfig()\n"
        "from multitask_serve.service.settings import Settings\n"
        "from multitask_serve.service.tracing import Tracing\n"
        f"settings = Settings(repository={str(tmp_path)!r}, otlp_endpoint='http://127.0.0.1:9')\n"
        "assert Tracing.from_settings(settings) is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "traces are not exported" in done.stderr and "[tracing]" in done.stderr
