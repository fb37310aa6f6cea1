"""One mapping from core errors to HTTP: statuses, headers and each wire format's body."""

from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException

from multitask_serve.service import errors
from multitask_serve.service.batcher import WorkerStopped, WorkerStuck
from multitask_serve.service.http_errors import (
    STATUS,
    as_http_exception,
    message_of,
    status_of,
)
from multitask_serve.service.oip import OIP
from multitask_serve.service.schemas import SERVICE

EXPECTED = {
    errors.ServiceError: 500,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.InvalidInput: 422,
    errors.Overloaded: 429,
    errors.Unavailable: 503,
    WorkerStopped: 503,
    WorkerStuck: 503,
}


def every_error_class() -> set[type[errors.ServiceError]]:
    found, todo = set(), [errors.ServiceError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_core_errors_carry_a_code_and_a_message_only():
    for cls in every_error_class():
        assert cls.code in STATUS, cls
        assert not hasattr(cls, "status"), cls


@pytest.mark.parametrize(
    ("cls", "status"), EXPECTED.items(), ids=lambda x: getattr(x, "__name__", x)
)
def test_each_code_has_its_status(cls, status):
    assert status_of(cls("m")) == status


def test_the_service_form_carries_code_and_message_with_the_status_headers():
    assert SERVICE.of(errors.Overloaded("busy")) == (
        429,
        {"error": {"code": "overloaded", "message": "busy"}},
        {"Retry-After": "1"},
    )
    assert SERVICE.of(errors.Unavailable("down"))[2] == {"Retry-After": "1"}
    assert SERVICE.of(errors.Unauthorized("who"))[2] == {"WWW-Authenticate": "Bearer"}
    assert SERVICE.of(errors.Conflict("twice"))[2] == {}


def test_the_oip_form_is_the_message_alone_and_a_422_is_a_400():
    assert OIP.of(errors.InvalidInput("bad")) == (400, {"error": "bad"}, {})
    assert OIP.of(errors.Unavailable("down")) == (503, {"error": "down"}, {"Retry-After": "1"})
    assert OIP.of(errors.TooLarge("big")) == (413, {"error": "big"}, {})


def test_an_unknown_task_gets_its_route_hint_on_the_wire_only():
    error = errors.UnknownTask("nope")
    assert error.message == "unknown task 'nope'" and error.task == "nope"
    assert isinstance(error, errors.NotFound)
    hinted = "unknown task 'nope'; GET /tasks lists the served ones"
    assert message_of(error) == hinted
    assert SERVICE.of(error)[:2] == (404, {"error": {"code": "not_found", "message": hinted}})
    assert OIP.of(error)[:2] == (404, {"error": hinted})
    assert message_of(errors.NotFound("unknown task 'x'")) == "unknown task 'x'"


def test_framework_exceptions_take_each_form_too():
    raised = as_http_exception(errors.TooLarge("request body exceeds 9 bytes"))
    assert (raised.status_code, raised.detail) == (413, "request body exceeds 9 bytes")
    ours = SERVICE.response(raised)
    assert ours.status_code == 413
    assert ours.body == b'{"error":{"code":"too_large","message":"request body exceeds 9 bytes"}}'
    theirs = OIP.response(HTTPException(405, "Method Not Allowed"))
    assert theirs.status_code == 405 and theirs.body == b'{"error":"Method Not Allowed"}'
    assert SERVICE.response(HTTPException(418, "tea")).body == (
        b'{"error":{"code":"http_error","message":"tea"}}'
    )
