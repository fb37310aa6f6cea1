"""The tests' own environment: no test and no server a test starts reads the host's MTS_*
variables (the service's settings), so an exported MTS_MAX_BATCH_TEXTS cannot change a result,
nor OpenTelemetry's variables that the settings read (an exported OTEL_EXPORTER_OTLP_ENDPOINT
would turn tracing on).

tests/e2e/test_unit_tier.py runs this tier with such variables set on the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from multitask_serve.service.settings import Settings
from support.servers import OTEL_SETTINGS, server_env
from tests.conftest import make_settings


def test_a_test_sees_no_mts_variable_and_make_settings_takes_the_defaults(tmp_path: Path):
    assert [name for name in os.environ if name.upper().startswith("MTS_")] == []
    assert not OTEL_SETTINGS & {name.upper() for name in os.environ}
    settings = make_settings(tmp_path)
    assert settings.traces_endpoint is None
    defaults = Settings.model_fields
    assert settings.max_batch_texts == defaults["max_batch_texts"].default
    assert settings.batch_max_texts == defaults["batch_max_texts"].default
    assert settings.log_level == defaults["log_level"].default


def test_a_variable_set_after_the_cleanup_is_read_which_is_what_the_cleanup_prevents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MTS_MAX_BATCH_TEXTS", "1")
    assert make_settings(tmp_path).max_batch_texts == 1


def test_a_server_gets_no_mts_variable_of_the_host_only_the_callers(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("MTS_MAX_BATCH_TEXTS", "1")
    monkeypatch.setenv("mts_log_level", "debug")  # the settings read any case
    monkeypatch.setenv("OTHER_VARIABLE", "kept")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "kept")  # the SDK's own, not the settings'
    env = server_env({"MTS_ADMIN_TOKEN": "token"})
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env and env["OTEL_SERVICE_NAME"] == "kept"
    assert {k: v for k, v in env.items() if k.upper().startswith("MTS_")} == {
        "MTS_ADMIN_TOKEN": "token"
    }
    assert env["OTHER_VARIABLE"] == "kept" and env["PATH"] == os.environ["PATH"]
