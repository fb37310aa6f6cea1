"""The in-flight limit refuses inference requests beyond its bound before the app sees them."""

from __future__ import annotations

import asyncio
import json

import pytest

from multitask_serve.service.app import INFERENCE as is_inference
from multitask_serve.service.limits import InFlightLimit

INFERENCE = [
    ("POST", "/predict"),
    ("POST", "/predict/embed"),
    ("POST", "/v2/models/sentiment/infer"),
    ("POST", "/v2/models/sentiment/versions/3/infer"),
]
NOT_INFERENCE = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/tasks"),
    ("POST", "/admin/heads/sentiment"),
    ("POST", "/admin/heads/sentiment/zero-shot"),
    ("POST", "/admin/heads/sentiment/rollback"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/sentiment"),
    ("GET", "/v2/models/sentiment/versions/3"),
    ("GET", "/v2/models/sentiment/ready"),
    ("GET", "/v2/models/sentiment/versions/3/ready"),
    ("GET", "/v2/models/sentiment/infer"),  # a 405, cheap: not counted
    ("GET", "/predict/embed"),
    ("POST", "/v2/models/sentiment"),
    ("POST", "/v2/models/sentiment/infer/more"),
    ("POST", "/predict/embed/more"),
    ("POST", "/predictions"),
]


@pytest.mark.parametrize(("method", "path"), INFERENCE)
def test_inference_routes_are_recognised(method, path):
    assert is_inference(method, path)


@pytest.mark.parametrize(("method", "path"), NOT_INFERENCE)
def test_other_routes_are_not_inference(method, path):
    assert not is_inference(method, path)


Answer = tuple[int, dict[bytes, bytes], bytes]


def gated_app(limit: int) -> tuple[InFlightLimit, asyncio.Event, list[str]]:
    """An app whose inference requests wait at a gate, behind the limit; records what it saw."""
    gate = asyncio.Event()
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        if is_inference(scope["method"], scope["path"]):
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return InFlightLimit(app, limit=limit, inference=is_inference), gate, reached


async def call(limited: InFlightLimit, method: str, path: str) -> Answer:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await limited({"type": "http", "method": method, "path": path}, None, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def assert_refused(answer: Answer) -> dict:
    status, headers, body = answer
    assert status == 429 and headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    return json.loads(body)


def test_beyond_the_limit_prediction_requests_get_429_at_once_and_others_pass():
    limited, gate, reached = gated_app(limit=2)

    async def main():
        held = [asyncio.create_task(call(limited, "POST", "/predict/embed")) for _ in range(2)]
        await asyncio.sleep(0.01)  # both are in flight, waiting at the gate
        refused = await call(limited, "POST", "/predict")
        health = await call(limited, "GET", "/readyz")  # probes are never counted or refused
        gate.set()
        served = await asyncio.gather(*held)
        again = await call(limited, "POST", "/predict/embed")  # finished requests free places
        return refused, health, served, again

    refused, health, served, again = asyncio.run(main())
    error = assert_refused(refused)["error"]
    assert error["code"] == "overloaded" and "limit 2" in error["message"]
    assert reached.count("/predict") == 0  # refused before the app saw it
    assert health[0] == 200 and [s[0] for s in served] == [200, 200] and again[0] == 200
    assert limited.active == 0


def test_oip_infer_shares_the_bound_and_is_refused_in_the_protocols_error_form():
    limited, gate, reached = gated_app(limit=2)

    async def main():
        # One request of each family fills the single, shared bound.
        held = [
            asyncio.create_task(call(limited, "POST", "/predict/embed")),
            asyncio.create_task(call(limited, "POST", "/v2/models/sentiment/infer")),
        ]
        await asyncio.sleep(0.01)
        assert limited.active == 2
        oip_refused = [
            await call(limited, "POST", "/v2/models/sentiment/infer"),
            await call(limited, "POST", "/v2/models/sentiment/versions/1/infer"),
        ]
        ours_refused = await call(limited, "POST", "/predict/sentiment")
        assert reached == ["/predict/embed", "/v2/models/sentiment/infer"]  # refused unseen
        others = [await call(limited, method, path) for method, path in NOT_INFERENCE]
        gate.set()
        served = await asyncio.gather(*held)
        return oip_refused, ours_refused, others, served

    oip_refused, ours_refused, others, served = asyncio.run(main())
    for answer in oip_refused:
        body = assert_refused(answer)
        assert set(body) == {"error"} and isinstance(body["error"], str)
        assert "in flight (limit 2)" in body["error"]
    assert assert_refused(ours_refused)["error"]["code"] == "overloaded"
    assert [a[0] for a in others] == [200] * len(NOT_INFERENCE)  # never counted or refused
    assert [s[0] for s in served] == [200, 200] and limited.active == 0


def test_a_limit_of_zero_counts_and_refuses_nothing():
    limited, gate, _ = gated_app(limit=0)

    async def main():
        gate.set()
        return [await call(limited, method, path) for method, path in INFERENCE * 3]

    assert [a[0] for a in asyncio.run(main())] == [200] * len(INFERENCE) * 3
    assert limited.active == 0
