"""The in-flight limit refuses prediction requests beyond its bound before the app sees them."""

from __future__ import annotations

import asyncio
import json

from service.limits import InFlightLimit


def test_beyond_the_limit_prediction_requests_get_429_at_once_and_others_pass():
    gate = asyncio.Event()
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        if scope["path"].startswith("/predict"):
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limited = InFlightLimit(app, limit=2)

    async def call(path: str) -> tuple[int, dict[bytes, bytes], bytes]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await limited({"type": "http", "path": path}, None, send)
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

    async def main():
        held = [asyncio.create_task(call("/predict/embed")) for _ in range(2)]
        await asyncio.sleep(0.01)  # both are in flight, waiting at the gate
        refused = await call("/predict")
        health = await call("/readyz")  # probes and admin are never counted or refused
        gate.set()
        served = await asyncio.gather(*held)
        again = await call("/predict/embed")  # finished requests free their places
        return refused, health, served, again

    refused, health, served, again = asyncio.run(main())
    status, headers, body = refused
    assert status == 429 and headers[b"retry-after"] == b"1"
    assert int(headers[b"content-length"]) == len(body)
    assert json.loads(body)["error"]["code"] == "overloaded"
    assert reached.count("/predict") == 0  # refused before the app saw it
    assert health[0] == 200 and [s[0] for s in served] == [200, 200] and again[0] == 200
    assert limited.active == 0
