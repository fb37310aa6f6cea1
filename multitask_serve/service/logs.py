"""Log lines as text or JSON, each with the id of the request it was written for.

``request_id`` is set per request by service/observability.py's ``RequestId`` middleware (its
value is the client's ``X-Request-ID`` when valid, a new uuid4 hex otherwise). uvicorn runs each
request in a task of its own, and a task and the threads it hands work to (``run_in_threadpool``)
see a copy of its context, so every line logged while a request is handled, its access line
included, carries its id; lines logged outside any request (start-up, the batch worker, the
repository watcher) carry none.

The access line (one per request, logger ``multitask_serve.access``) is the observability
middleware's, not uvicorn's (server.py turns uvicorn's off): method, the matched route's template
(never the raw path), status, duration in ms and the tasks the request named, which the
prediction path and the admin API add with ``note_tasks`` while the request runs. In JSON these
are fields of their own (a record's ``fields``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

request_id: ContextVar[str | None] = ContextVar("mts_request_id", default=None)
# The tasks the request in progress named, for its access line: a list the middleware sets per
# request and the request's code appends to (the same list in any task or thread it hands work
# to, whose contexts are copies). None outside a request.
request_tasks: ContextVar[list[str] | None] = ContextVar("mts_request_tasks", default=None)
# Tasks one access line names at most (a multi-task request may name many).
MAX_NOTED_TASKS = 32

LogFormat = Literal["text", "json"]
# The text format: the request id, in brackets, only on lines written for a request.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_IN_REQUEST = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def note_tasks(tasks: Iterable[str]) -> None:
    """Name ``tasks`` on the current request's access line (each once, at most
    ``MAX_NOTED_TASKS``); nothing outside a request. The caller passes valid task names only: a
    text line writes them as they are."""
    noted = request_tasks.get()
    if noted is None:
        return
    for task in tasks:
        if len(noted) >= MAX_NOTED_TASKS:
            return
        if task not in noted:
            noted.append(task)


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the current request's id, or None outside a request.

    A handler's filter, not a logger's: filters on a logger do not see records that propagate
    from its children (uvicorn's loggers to the root).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, with ``[request id]`` before the colon inside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            return TEXT_FORMAT % record.__dict__
        return TEXT_FORMAT_IN_REQUEST % record.__dict__


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, and the
    record's ``fields`` (a dict: the access line's method, route, status, duration_ms, tasks) as
    fields of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update((k, v) for k, v in fields.items() if k not in entry)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class _Handler(logging.StreamHandler[TextIO]):
    """The root handler ``configure`` installs (a class of its own, so it can find it again)."""


def configure(log_format: LogFormat, level: str | int | None = None) -> None:
    """Log lines of the whole process to stderr in ``log_format``, each with its request id.

    Like ``logging.basicConfig``, but a second call switches the format of the handler the first
    installed (``mts`` configures text at start, ``mts serve`` then applies MTS_LOG_FORMAT before
    it loads anything). Where logging was set up by something else (the root logger has handlers
    of its own: an embedding program, pytest) nothing is changed. uvicorn gets no log config of
    its own (server.py passes ``log_config=None``): its loggers propagate to this handler, so its
    error lines take the same format and request id.
    """
    root = logging.getLogger()
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if ours:
        for handler in ours:
            handler.setFormatter(formatter)
    elif not root.handlers:
        handler = _Handler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(formatter)
        root.addHandler(handler)
    else:
        return
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)
