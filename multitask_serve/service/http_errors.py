"""The one place errors become HTTP: statuses, headers and each wire format's error body.

The core raises ``ServiceError``s that carry a code and a message (service/errors.py). This module
maps a code to its status, adds ``Retry-After`` (429, 503) and ``WWW-Authenticate`` (401), adds
route hints a client can act on, and writes the body in the form of the route's protocol: the
service's own ``{"error": {"code", "message"}}`` (``SERVICE``), the Open Inference Protocol's
``{"error": message}`` (``OIP``), Text Embeddings Inference's ``{"error", "error_type"}`` (``TEI``)
or OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (``OPENAI``). Our routes'
exception handlers (``install_handlers``), the route classes of the other formats (service/oip.py,
tei.py, openai_compat.py) and the limits middleware (service/limits.py) all answer through it.
Each format's body is also described as JSON Schema (``ERROR_SCHEMAS``, which the OpenAPI document
references: service/openapi.py), and a method a path does not serve gets 405 in its route's form
with ``Allow`` (``method_not_allowed``).
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

    ``schema`` names the body's JSON Schema in the OpenAPI document (``ERROR_SCHEMAS``).
    """

    body: Callable[[str, str], Any]
    schema: str
    statuses: Mapping[int, int] = field(default_factory=dict)

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


def service_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def oip_body(_code: str, message: str) -> dict[str, str]:
    return {"error": message}


# Text Embeddings Inference's error_type per core code: TEI's ErrorType variant names, which serde
# writes as they are spelled (router/src/lib.rs derives Serialize with no renaming).
TEI_ERROR_TYPES: Mapping[str, str] = {
    "too_large": "Validation",
    "invalid_input": "Validation",
    "not_found": "Validation",
    "method_not_allowed": "Validation",
    "unsupported_media_type": "Validation",
    "overloaded": "Overloaded",
    "unavailable": "Unhealthy",
    "internal": "Backend",
}


def tei_body(code: str, message: str) -> dict[str, str]:
    return {"error": message, "error_type": TEI_ERROR_TYPES.get(code, "Backend")}


# OpenAI's error code for the core codes it has one for; others keep the core's code.
OPENAI_CODES: Mapping[str, str] = {"not_found": "model_not_found"}


def openai_body(code: str, message: str) -> dict[str, dict[str, str | None]]:
    kind = "invalid_request_error" if code in ("invalid_input", "too_large", "not_found") else code
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": None,
            "code": OPENAI_CODES.get(code, code),
        }
    }


# The service's own routes.
SERVICE = WireFormat(service_body, "Error")
# Open Inference Protocol v2: v2 clients treat any malformed request as a 400 Bad Request.
OIP = WireFormat(oip_body, "OipError", {422: 400})
# Text Embeddings Inference (service/tei.py): a failed inference is TEI's 424 (backend).
TEI = WireFormat(tei_body, "TeiError", {500: 424})
# OpenAI's embeddings API (service/openai_compat.py): a request it cannot serve is a 400.
OPENAI = WireFormat(openai_body, "OpenAIError", {422: 400, 413: 400})


def _string(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


# Each wire format's error body as JSON Schema, for the OpenAPI document (service/openapi.py).
ERROR_SCHEMAS: Mapping[str, dict[str, Any]] = {
    "Error": {
        "title": "Error",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "What went wrong, for a client to switch on.",
                        "enum": sorted({*STATUS, *FRAMEWORK_CODES.values(), "http_error"}),
                    },
                    "message": _string("What went wrong, for a person."),
                },
            }
        },
    },
    "OipError": {
        "title": "OipError",
        "description": "The Open Inference Protocol's error body.",
        "type": "object",
        "required": ["error"],
        "properties": {"error": _string("What went wrong.")},
    },
    "TeiError": {
        "title": "TeiError",
        "description": "Text Embeddings Inference's error body.",
        "type": "object",
        "required": ["error", "error_type"],
        "properties": {
            "error": _string("What went wrong."),
            "error_type": {
                "type": "string",
                "enum": sorted({*TEI_ERROR_TYPES.values(), "Backend", "Empty"}),
            },
        },
    },
    "OpenAIError": {
        "title": "OpenAIError",
        "description": "OpenAI's error body.",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": _string("What went wrong."),
                    "type": _string("invalid_request_error, or the error's code."),
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
}


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


def method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
    """405 in the form of the route the path belongs to, with ``Allow`` listing every method the
    path serves (Starlette's lists only the first route that matched the path)."""
    route = request.scope.get("route")
    wire: WireFormat = getattr(route, "errors", SERVICE)
    methods: set[str] = set()
    for candidate in iter_route_contexts(request.app.routes):
        path_regex = getattr(candidate, "path_regex", None)
        if path_regex is not None and path_regex.fullmatch(request.scope["path"]):
            methods |= set(candidate.methods or ())
    allow = ", ".join(sorted(methods)) or (exc.headers or {})["Allow"]
    message = f"{request.method} is not served at {request.url.path}; it serves {allow}"
    status, body, headers = wire.answer(405, "method_not_allowed", message)
    return JSONResponse(body, status, headers={**headers, "Allow": allow})


def install_handlers(app: FastAPI) -> None:
    """Every error of the app's own routes in the service's form; OIP routes answer their own."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return SERVICE.response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(service_body("invalid_input", validation_message(exc)), 422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 405 and "Allow" in (exc.headers or {}):  # the router's
            return method_not_allowed(request, exc)
        return SERVICE.response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(service_body("internal", "internal server error"), 500)
