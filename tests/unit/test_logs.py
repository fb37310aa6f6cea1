"""Log lines as text or JSON with the request id (service/logs.py), and who configures them."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator

from multitask_serve.service.logs import (
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    configure,
    request_id,
)


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's handlers, as in a fresh ``mts`` process; restored after.

    Entered in the test itself: pytest adds its capture handlers per phase (setup, call)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved
        root.setLevel(level)


def in_request(rid: str, fn, *args):
    """``fn(*args)`` as the RequestId middleware runs a request: in a context with its id set."""

    def run():
        request_id.set(rid)
        return fn(*args)

    return contextvars.copy_context().run(run)


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    RequestIdFilter().filter(rec)
    return rec


def test_text_lines_name_the_request_id_only_inside_a_request():
    outside = TextFormatter().format(record("mts", "loaded %d heads", 3))
    assert outside.endswith(" INFO mts: loaded 3 heads")
    inside = in_request("abc123", lambda: TextFormatter().format(record("mts", "hello")))
    assert inside.endswith(" INFO mts [abc123]: hello")


def test_json_lines_carry_the_request_id_and_the_record_s_fields():
    fields = {"method": "POST", "route": "/predict/{task}", "status": 429, "tasks": ["x"]}

    def access() -> str:
        rec = record("multitask_serve.access", "POST /predict/{task} 429 0.3 ms tasks=x")
        rec.fields = {**fields, "message": "forged", "request_id": "forged"}
        return JsonFormatter().format(rec)

    entry = json.loads(in_request("r-1", access))
    assert entry["request_id"] == "r-1" and entry["level"] == "INFO"
    assert entry["logger"] == "multitask_serve.access"
    assert entry["message"] == "POST /predict/{task} 429 0.3 ms tasks=x"  # not the field's
    assert {k: entry[k] for k in fields} == fields
    assert entry["time"].endswith("+00:00")
    outside = json.loads(JsonFormatter().format(record("mts", 'a "quoted"\nline')))
    assert outside["request_id"] is None and outside["message"] == 'a "quoted"\nline'


def test_json_lines_keep_a_traceback_in_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("mts", logging.ERROR, __file__, 1, "failed", (), None)
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_configure_installs_one_handler_and_a_second_call_switches_its_format(capsys):
    with bare_root() as root:
        configure("text", "info")
        configure("json")
        assert len(root.handlers) == 1 and root.level == logging.INFO
        in_request("req-9", logging.getLogger("multitask_serve.x").info, "in %s", "json")
    entry = json.loads(capsys.readouterr().err.strip())
    assert entry["message"] == "in json" and entry["request_id"] == "req-9"


def test_configure_leaves_logging_set_up_by_someone_else_alone():
    with bare_root() as root:
        theirs = logging.NullHandler()
        root.addHandler(theirs)
        root.setLevel(logging.WARNING)
        configure("json", "debug")
        assert root.handlers == [theirs] and root.level == logging.WARNING
