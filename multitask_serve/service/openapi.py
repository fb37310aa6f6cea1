"""The OpenAPI document says what every route answers, errors included, in the route's wire format.

FastAPI documents a route's success and its request body. ``document_errors`` adds to every
operation the error statuses it can answer, derived in one place from what the operation is (it
reads a body, takes a task, runs inference, is an admin route: ``error_statuses``), each with the
error body's schema of the route's wire format (``WireFormat.schema``: the route class names
the format) and the headers that come with it (``Retry-After``, ``WWW-Authenticate``). A route may
also name a status of its own (``responses={503: {...}}``); it gets the same body schema. The
admin routes declare their bearer token as a security scheme, so generated clients send it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from multitask_serve.modelrepo.types import TASK_NAME_RE
from multitask_serve.service.http_errors import WireFormat, headers_for

ADMIN_PREFIX = "/admin/"
ADMIN_SECURITY = "adminToken"

DESCRIPTIONS = {
    400: "Invalid request (the Open Inference Protocol's answer to an invalid body)",
    401: "Admin token missing or wrong",
    403: "Admin routes disabled: the service runs without MTS_ADMIN_TOKEN",
    404: "Unknown task (GET /tasks lists the served ones), or no such version",
    409: "Conflict: the task exists, or the head was trained against another trunk",
    413: (
        "Request body over the size limit, too many texts in one request, or a text too long "
        "to run within the memory limit"
    ),
    422: "Invalid input: a body, parameter or head archive that cannot be served",
    424: "Inference failed (Text Embeddings Inference's status for a backend error)",
    429: "Overloaded: too many requests in flight or texts queued; retry after Retry-After",
    500: "Inference failed",
    503: "Not ready, stopped, or shutting down; retry after Retry-After",
}
HEADERS = {
    "Retry-After": {"description": "Seconds to wait to retry.", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"description": "The scheme to use: Bearer.", "schema": {"type": "string"}},
}


def error_statuses(path: str, method: str, operation: dict[str, Any], inference: bool) -> set[int]:
    """Every error status an operation can answer, in the service's own statuses (before a wire
    format maps them, as OIP maps 422 to 400)."""
    statuses: set[int] = set()
    inputs = {p.get("in") for p in operation.get("parameters", [])}
    if "requestBody" in operation:
        # Not JSON; over the body limit; a body that does not validate.
        statuses |= {400, 413, 422}
    if inputs & {"query", "header"}:
        statuses.add(422)
    if "{task}" in path or inference:
        statuses.add(404)  # unknown task (a body may name tasks: POST /predict, /v1/embeddings)
    if inference:
        # Too many texts; the in-flight bound or a full queue; a stopped batch worker; a failure.
        statuses |= {413, 429, 500, 503}
    if path.startswith(ADMIN_PREFIX):
        statuses |= {401, 403}
        if "{task}" in path:
            statuses.add(422)  # not a valid task name
        if method == "post":
            statuses.add(409)
    return statuses


def _answer(status: int, wire: WireFormat, declared: dict[str, Any] | None) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{wire.schema_name}"}
    answer: dict[str, Any] = {
        "description": (declared or {}).get("description") or DESCRIPTIONS.get(status, "Error"),
        "content": {"application/json": {"schema": schema}},
    }
    headers = {name: {**HEADERS[name], "required": True} for name in headers_for(status)}
    if headers:
        answer["headers"] = headers
    return answer


def _operations(app: FastAPI, own: WireFormat) -> list[tuple[str, str, WireFormat]]:
    """(path, method, wire format) of every documented operation, routers' prefixes included;
    ``own`` for the app's own routes."""
    return [
        (str(context.path_format), method.lower(), getattr(route, "errors", own))
        for context in iter_route_contexts(app.routes)
        if isinstance(route := context.original_route, APIRoute) and route.include_in_schema
        for method in sorted(context.methods or ())
    ]


def document_errors(
    app: FastAPI, is_inference: Callable[[str, str], bool], own: WireFormat
) -> None:
    """Make ``app.openapi()`` document every error answer; ``is_inference(method, path)`` says
    which operations run inference (service/limits.py's list); ``own`` is the wire format of the
    app's own routes."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = generate()
        components = document.setdefault("components", {})
        operations = _operations(app, own)
        schemas = components.setdefault("schemas", {})
        schemas.update({wire.schema_name: wire.schema for _, _, wire in operations})
        # FastAPI's own 422 body (a list of pydantic errors) is not what any route answers.
        for unused in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(unused, None)
        components.setdefault("securitySchemes", {})[ADMIN_SECURITY] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The admin token the service was started with (MTS_ADMIN_TOKEN).",
        }
        for path, method, wire in operations:
            operation = document["paths"][path][method]
            responses = operation["responses"]
            declared = {int(s): responses.pop(s) for s in list(responses) if int(s) >= 400}
            declared.pop(422, None)  # FastAPI's, replaced by ours below
            for status in declared.keys() | error_statuses(
                path, method, operation, is_inference(method.upper(), path)
            ):
                answered = wire.statuses.get(status, status)
                responses[str(answered)] = _answer(answered, wire, declared.get(status))
            operation["responses"] = dict(sorted(responses.items()))
            for parameter in operation.get("parameters", []):
                if (parameter["in"], parameter["name"]) == ("path", "task"):
                    parameter["schema"]["pattern"] = TASK_NAME_RE.pattern  # no other is served
            if path.startswith(ADMIN_PREFIX):
                operation["security"] = [{ADMIN_SECURITY: []}]
                # The token is the security scheme's, not a parameter to fill in.
                operation["parameters"] = [
                    p
                    for p in operation.get("parameters", [])
                    if (p["in"], p["name"].lower()) != ("header", "authorization")
                ]
                if not operation["parameters"]:
                    del operation["parameters"]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
