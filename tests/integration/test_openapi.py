"""The OpenAPI document describes every answer, and undeclared methods answer 405 with ``Allow``.

Each error status a route answers is documented with the error body's schema of the route's wire
format (service/openapi.py); here the document is read, and real error answers are checked
against what it says about them.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

WIRE_SCHEMAS = {"/v2": "OipError", "/tei/": "TeiError", "/v1/": "OpenAIError"}


def schema_name(path: str) -> str:
    return next((name for prefix, name in WIRE_SCHEMAS.items() if path.startswith(prefix)), "Error")


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def error_schema(document: dict[str, Any], path: str, method: str, status: int) -> dict:
    answer = document["paths"][path][method]["responses"][str(status)]
    ref = answer["content"]["application/json"]["schema"]["$ref"]
    return {**document["components"]["schemas"][ref.rsplit("/", 1)[1]], "$defs": {}}


def test_every_error_status_is_documented_with_its_wire_formats_body(document):
    for path, operations in document["paths"].items():
        for operation in operations.values():
            errors = {int(s): a for s, a in operation["responses"].items() if int(s) >= 400}
            for status, answer in errors.items():
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref == f"#/components/schemas/{schema_name(path)}", (path, status)
                if status in (429, 503):
                    assert answer["headers"]["Retry-After"]["required"] is True


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/predict/{task}", "post", {404, 413, 422, 429, 503}),
        ("/predict", "post", {404, 413, 422, 429, 503}),
        ("/v2/models/{task}/infer", "post", {400, 404, 413, 429, 503}),
        ("/tei/{task}/embed", "post", {404, 413, 422, 424, 429, 503}),
        ("/v1/embeddings", "post", {400, 404, 429, 503}),
        ("/admin/heads/{task}", "post", {401, 403, 409, 413, 422}),
        ("/admin/heads/{task}", "delete", {401, 403, 404}),
        ("/readyz", "get", {503}),
        ("/v2/health/ready", "get", {503}),
    ],
)
def test_a_route_documents_the_statuses_it_answers(document, path, method, statuses):
    assert statuses <= {int(s) for s in document["paths"][path][method]["responses"]}


def test_admin_routes_declare_the_bearer_token_and_answer_201_on_adds(document):
    assert document["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert ("security" in operation) == path.startswith("/admin/"), path
            names = [p["name"].lower() for p in operation.get("parameters", [])]
            assert "authorization" not in names, path
    assert "201" in document["paths"]["/admin/heads/{task}/zero-shot"]["post"]["responses"]


def test_metrics_documents_the_prometheus_text_format(client, document):
    content = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    answered = client.get("/metrics").headers["content-type"]
    assert list(content) == [answered] == ["text/plain; version=0.0.4; charset=utf-8"]


def fits(template: str, path: str) -> bool:
    parts, given = template.split("/"), path.split("/")
    return len(parts) == len(given) and all(
        a == b or a.startswith("{") for a, b in zip(parts, given, strict=True)
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/predict/nope", {"inputs": "a"}),
        ("post", "/v2/models/nope/infer", {"inputs": []}),
        ("post", "/tei/nope/embed", {"inputs": "a"}),
        ("post", "/v1/embeddings", {"model": "nope", "input": "a"}),
        ("post", "/predict/embed", {"inputs": []}),
        ("post", "/v2/models/embed/infer", {"inputs": []}),
        ("post", "/tei/embed/embed", {"inputs": 3}),
        ("post", "/v1/embeddings", {"model": "embed"}),
        ("get", "/admin/heads/embed/versions", None),
    ],
)
def test_error_answers_match_the_documented_schema(client, document, method, path, body):
    response = client.request(method.upper(), path, json=body)
    assert response.status_code >= 400
    template = next(p for p, ops in document["paths"].items() if method in ops and fits(p, path))
    schema = error_schema(document, template, method, response.status_code)
    jsonschema.validate(response.json(), schema)


@pytest.mark.parametrize(
    ("method", "path", "allow", "body_key"),
    [
        ("TRACE", "/predict/sentiment", "POST", "code"),
        ("GET", "/predict", "POST", "code"),
        ("PUT", "/tasks", "GET", "code"),
        ("OPTIONS", "/admin/heads/embed", "DELETE, POST", "code"),
        ("TRACE", "/v2/models/embed/infer", "POST", None),
        ("PATCH", "/tei/embed/embed", "POST", None),
        ("DELETE", "/v1/embeddings", "POST", None),
    ],
)
def test_an_undeclared_method_answers_405_with_allow_in_the_routes_format(
    client, method, path, allow, body_key
):
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    error = response.json()["error"]
    if path.startswith("/v2"):
        assert isinstance(error, str) and allow in error
    elif path.startswith("/tei/"):
        assert response.json()["error_type"]
    elif path.startswith("/v1/"):
        assert error["code"] == "method_not_allowed"
    else:
        assert error[body_key] == "method_not_allowed"


TEXT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}


@pytest.mark.parametrize(
    "request_body",
    [
        {"inputs": [{**TEXT, "parameters": True}]},
        {"inputs": [TEXT], "parameters": [1]},
        {"inputs": [TEXT], "outputs": [{"name": "label", "parameters": 5}]},
    ],
)
def test_oip_parameters_that_are_not_objects_get_400_not_500(client, request_body):
    # Found by fuzzing the documented inference request: an input's "parameters": true was a
    # TypeError (500), an output's an AttributeError; the request's own were ignored.
    response = client.post("/v2/models/topic-zs/infer", json=request_body)
    assert response.status_code == 400, response.text
    assert "'parameters' of " in response.json()["error"]
