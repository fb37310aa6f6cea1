"""What every wire format shares when errors become HTTP: a core error's code -> its status,
the headers that come with a status, and the machinery that answers in a format's own form.

The core raises ``ServiceError``s that carry a code and a message (service/errors.py). Each wire
format is one module that knows its own error body, its error codes, the statuses it answers
otherwise and its body's JSON Schema (a ``WireFormat``): the service's own in service/schemas.py
(``SERVICE``), the Open Inference Protocol's in service/oip.py, Text Embeddings Inference's in
service/tei.py, OpenAI's in service/openai_compat.py. Here: the code -> status mapping, the
route class that makes a router answer every error in its format (``route_class``), the 405 in the
form of the path's route (``method_not_allowed``) and the app's own handlers
(``install_handlers``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.exceptions import HTTPException

from multitask_serve.service.errors import ServiceError, UnknownTask

log = logging.getLogger(__name__)

# A core error's code -> its HTTP status; a code not listed is a 500.
STATUS: Mapping[str, int] = {
    "invalid_input": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "overloaded": 429,
    "unavailable": 503,
    "internal": 500,
}

# The framework's own HTTPExceptions (a 405, a body FastAPI cannot parse) -> the code they get.
FRAMEWORK_CODES: Mapping[int, str] = {
    400: "invalid_input",  # a body that does not parse as what the route reads
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def status_of(error: ServiceError) -> int:
    return STATUS.get(error.code, 500)


def headers_for(status: int) -> dict[str, str]:
    """What an error answer with this status carries besides its body."""
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status in (429, 503):  # overloaded, unavailable: worth a retry
        return {"Retry-After": "1"}
    return {}


def message_of(error: ServiceError) -> str:
    """The core's message, with a hint at the route that helps (the core names no route)."""
    if isinstance(error, UnknownTask):
        return f"{error.message}; GET /tasks lists the served ones"
    return error.message


def as_http_exception(error: ServiceError) -> HTTPException:
    """For code that must raise the framework's own exception (the body limit, mid-read)."""
    return HTTPException(status_of(error), error.message)


@dataclass(frozen=True)
class WireFormat:
    """One protocol's error answers: ``body(code, message)``, and statuses it answers otherwise.

    ``schema`` is the body's JSON Schema; its title names it in the OpenAPI document
    (service/openapi.py). ``inference`` lists the paths (regular expressions, matched in full) of
    the format's routes that run inference on POST: they share one in-flight bound
    (service/limits.py).
    """

    body: Callable[[str, str], Any]
    schema: Mapping[str, Any]
    statuses: Mapping[int, int] = field(default_factory=dict)
    inference: tuple[str, ...] = ()

    @property
    def schema_name(self) -> str:
        name: str = self.schema["title"]
        return name

    def answer(self, status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body, headers) of an error with this status, code and message."""
        status = self.statuses.get(status, status)
        return status, self.body(code, message), headers_for(status)

    def of(self, error: ServiceError) -> tuple[int, Any, dict[str, str]]:
        return self.answer(status_of(error), error.code, message_of(error))

    def response(self, exc: ServiceError | HTTPException) -> JSONResponse:
        if isinstance(exc, ServiceError):
            status, body, headers = self.of(exc)
        else:
            code = FRAMEWORK_CODES.get(exc.status_code, "http_error")
            status, body, headers = self.answer(exc.status_code, code, str(exc.detail))
            headers = {**(exc.headers or {}), **headers}  # a 405's Allow, for one
        return JSONResponse(body, status, headers=headers or None)


def validation_message(exc: RequestValidationError) -> str:
    """One line naming every field a request body got wrong."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )


def route_class(wire: WireFormat) -> type[APIRoute]:
    """A route class whose routes answer every error in ``wire``'s form: core errors, the body
    limit (an HTTPException raised while the body is read) and bodies that fail validation."""

    class WireRoute(APIRoute):
        errors = wire  # read by the OpenAPI document (service/openapi.py) and 405s

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except (ServiceError, HTTPException) as exc:
                    return wire.response(exc)
                except RequestValidationError as exc:
                    message = validation_message(exc)
                    status, body, headers = wire.answer(422, "invalid_input", message)
                    return JSONResponse(body, status, headers=headers or None)

            return handle

    return WireRoute


def string(description: str) -> dict[str, str]:
    """A string property of an error body's JSON Schema."""
    return {"type": "string", "description": description}


def method_not_allowed(request: Request, exc: HTTPException, default: WireFormat) -> JSONResponse:
    """405 in the form of the route the path belongs to (``default`` for a route of no wire
    format), with ``Allow`` listing every method the path serves (Starlette's lists only the first
    route that matched the path)."""
    route = request.scope.get("route")
    wire: WireFormat = getattr(route, "errors", default)
    methods: set[str] = set()
    for candidate in iter_route_contexts(request.app.routes):
        path_regex = getattr(candidate, "path_regex", None)
        if path_regex is not None and path_regex.fullmatch(request.scope["path"]):
            methods |= set(candidate.methods or ())
    allow = ", ".join(sorted(methods)) or (exc.headers or {})["Allow"]
    message = f"{request.method} is not served at {request.url.path}; it serves {allow}"
    status, body, headers = wire.answer(405, "method_not_allowed", message)
    return JSONResponse(body, status, headers={**headers, "Allow": allow})


def install_handlers(app: FastAPI, own: WireFormat) -> None:
    """Every error of the app's own routes in its own form ``own``; the routes of other wire
    formats answer their own (``route_class``)."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return own.response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(own.body("invalid_input", validation_message(exc)), 422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 405 and "Allow" in (exc.headers or {}):  # the router's
            return method_not_allowed(request, exc, own)
        return own.response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(own.body("internal", "internal server error"), 500)
