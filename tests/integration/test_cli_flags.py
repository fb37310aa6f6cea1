"""`mts serve` takes every MTS_* setting as a flag too; `mts --version`; one log level."""

from __future__ import annotations

import logging

import pytest

from multitask_serve.cli import main, parser
from multitask_serve.service import server
from multitask_serve.service.settings import Settings


def test_every_setting_is_a_serve_flag_whose_help_names_its_variable():
    serve = parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    helps = {a.dest: a.help or "" for a in serve._actions}
    for name in Settings.model_fields:
        if name in ("repository", "host", "port", "log_level"):
            continue  # --repo, --host, --port and mts --log-level
        assert f"MTS_{name.upper()}" in helps[f"setting_{name}"], name


def test_flags_reach_the_settings_and_win_over_the_environment(repo, monkeypatch):
    seen: list[Settings] = []
    monkeypatch.setattr(server, "serve", lambda app, settings: seen.append(settings))
    monkeypatch.setenv("MTS_BATCH_MAX_TEXTS", "7")
    argv = ["--log-level", "warning", "serve", "--repo", str(repo), "--batch-max-texts", "3"]
    assert main([*argv, "--max-queued-texts", "99", "--io-binding", "false"]) == 0
    (settings,) = seen
    assert settings.batch_max_texts == 3 and settings.max_queued_texts == 99
    assert settings.io_binding is False and settings.log_level == "warning"
    assert logging.getLogger().getEffectiveLevel() <= logging.WARNING


def test_a_bad_flag_value_is_one_clear_line_not_a_traceback(repo, capsys):
    assert main(["serve", "--repo", str(repo), "--max-batch-texts", "many"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mts serve:") and "max_batch_texts" in err and "Traceback" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("mts 0.")
