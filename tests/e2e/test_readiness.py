"""Readiness of a real ``mts serve`` whose inference hangs: /readyz fails within the bound when
the hang is on the inference thread; probes time out when it is in a run inline on the event loop
(a small request at an idle server, ``MTS_BATCH_INLINE_MAX_TOKENS``)."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest

from support.servers import start_server
from tests.conftest import SERVER_ENV

TIMEOUT_S = 1.0  # MTS_READINESS_TIMEOUT_SECONDS
HANG_TEXT = "hold the inference thread"
# `mts serve`, except that a batch holding HANG_TEXT never finishes: the inference thread waits
# on an event nobody sets, as it would on a deadlocked or wedged runtime.
SERVE_WITH_A_HANG = f"""
import sys
import threading

from multitask_serve.cli import main
from multitask_serve.service.engine import Engine

never = threading.Event()
predict_many = Engine.predict_many


def hanging(self, jobs):
    if any(text == {HANG_TEXT!r} for job in jobs for text in job.texts):
        never.wait()
    return predict_many(self, jobs)


Engine.predict_many = hanging
sys.exit(main())
"""


def hang(url: str) -> None:
    """Send the request that hangs, from a thread; the server is killed with it still held."""

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{url}/predict/embed", json={"inputs": HANG_TEXT}, timeout=30)

    threading.Thread(target=send, daemon=True).start()


def test_readyz_of_a_real_server_fails_within_the_timeout_when_its_inference_hangs(repo, tmp_path):
    env = {
        **SERVER_ENV,
        "MTS_READINESS_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "MTS_BATCH_INLINE_MAX_TOKENS": "0",  # every batch on the inference thread
    }
    proc, url = start_server(repo, tmp_path / "server.log", env, python=("-c", SERVE_WITH_A_HANG))
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/predict/embed", json={"inputs": "a"}).status_code == 200
            assert http.get("/readyz").json()["probe"] == "ran"
            sent = time.monotonic()
            hang(url)
            answers = []
            while time.monotonic() - sent < TIMEOUT_S + 5:
                r = http.get("/readyz")
                answers.append((round(time.monotonic() - sent, 2), r.status_code))
                if r.status_code == 503:
                    break
                time.sleep(0.05)
            to_failure = time.monotonic() - sent
            print(f"/readyz answers (s after the hung request was sent, status): {answers}")
            print(f"readyz 503 {to_failure:.2f} s after the hung request was sent")
            assert r.status_code == 503, answers
            assert r.json()["error"]["message"].startswith("batch worker stuck: no batch finished")
            assert TIMEOUT_S - 0.1 <= to_failure <= TIMEOUT_S + 2.0
            started = time.monotonic()
            assert http.get("/readyz").status_code == 503
            assert time.monotonic() - started < 1.0  # from then on at once
            metrics = http.get("/metrics").text
            assert 'mts_readiness_probes_total{outcome="stuck"}' in metrics
    finally:
        # A hung inference thread cannot be stopped: SIGTERM would wait on it forever.
        proc.kill()
        proc.wait()


def test_a_hang_in_an_inline_run_holds_the_probes_until_they_time_out(repo, tmp_path):
    """The default: a one-text request at an idle server runs inline on the event loop, so its
    hang holds /healthz and /readyz too. Kubernetes counts a probe that times out as failed:
    readiness takes the pod out of its Service, liveness restarts it
    (k8s/replicaset/deployment.yaml). An inline run is at most MTS_BATCH_INLINE_MAX_TOKENS of
    work (milliseconds), so one that outlasts a probe's timeout is a hang, not a long batch."""
    env = {**SERVER_ENV, "MTS_READINESS_TIMEOUT_SECONDS": str(TIMEOUT_S)}
    proc, url = start_server(repo, tmp_path / "server.log", env, python=("-c", SERVE_WITH_A_HANG))
    try:
        with httpx.Client(base_url=url, timeout=2 * TIMEOUT_S) as http:
            assert http.post("/predict/embed", json={"inputs": "a"}).status_code == 200
            hang(url)
            time.sleep(0.5)  # the request has reached the engine
            for path in ("/healthz", "/readyz"):
                with pytest.raises(httpx.ReadTimeout):
                    http.get(path)
    finally:
        proc.kill()
        proc.wait()
