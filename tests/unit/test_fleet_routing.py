"""The fleet router's reading of a request's task (multitask_serve/fleet/routing.py) and the
replica's in-process HTTP exchange (fleet/asgi.py): neither needs Ray."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from multitask_serve.fleet.asgi import Exchange, call
from multitask_serve.fleet.routing import MAX_PARSED_BODY, task_of


@pytest.mark.parametrize(
    ("path", "task"),
    [
        ("/predict/sentiment", "sentiment"),
        ("/v2/models/topic-zs/infer", "topic-zs"),
        ("/v2/models/topic/versions/2/ready", "topic"),
        ("/tei/embed/embed", "embed"),
        ("/tei/ner", "ner"),
        ("/admin/heads/mood/zero-shot", "mood"),
        ("/admin/heads/mood", "mood"),
        ("/tasks", None),
        ("/metrics", None),
        ("/readyz", None),
        ("/v2/repository/index", None),
        ("/predict/Not_A_Task", None),
    ],
)
def test_the_path_names_the_task_where_the_route_has_one(path, task):
    assert task_of(path) == task


@pytest.mark.parametrize(
    ("path", "body", "task"),
    [
        ("/predict", {"inputs": ["x"], "tasks": ["topic", "ner"]}, "topic"),
        ("/v1/embeddings", {"input": "x", "model": "embed"}, "embed"),
        ("/predict", {"inputs": ["x"]}, None),
        ("/predict", {"inputs": ["x"], "tasks": []}, None),
        ("/predict", {"inputs": ["x"], "tasks": [3]}, None),
        ("/predict", ["not", "an", "object"], None),
        ("/tasks", {"tasks": ["topic"]}, None),
    ],
)
def test_a_body_names_the_task_of_multi_task_and_openai_requests(path, body, task):
    assert task_of(path, json.dumps(body).encode()) == task


def test_a_body_that_is_no_json_or_too_big_names_no_task():
    assert task_of("/predict", b"{not json") is None
    big = json.dumps({"tasks": ["topic"], "inputs": ["x" * MAX_PARSED_BODY]}).encode()
    assert task_of("/predict", big) is None


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "body": body.decode(),
            "header": request.headers.get("x-test"),
        },
        status_code=201,
        headers={"x-answer": "yes"},
    )


def test_an_exchange_reaches_the_app_and_its_whole_answer_comes_back():
    app = Starlette(routes=[Route("/echo/{rest:path}", echo, methods=["POST"])])
    request = Exchange("POST", "/echo/a/b", b"q=1", [(b"x-test", b"t")], b"hello")
    answer = asyncio.run(call(app, request))
    assert answer.status == 201 and (b"x-answer", b"yes") in answer.headers
    assert json.loads(answer.body) == {
        "method": "POST",
        "path": "/echo/a/b",
        "query": "q=1",
        "body": "hello",
        "header": "t",
    }


def test_mts_fleet_says_what_is_missing_instead_of_a_traceback(tmp_path, capsys):
    from multitask_serve.cli import main

    assert main(["fleet", "--repo", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err
    try:
        import ray  # noqa: F401
    except ImportError:
        assert "needs the fleet extra" in error
    else:
        assert "holds no built repository" in error
