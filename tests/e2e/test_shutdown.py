"""Graceful shutdown of a real process: readiness fails first, in-flight requests finish."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from support.servers import start_server
from tests.conftest import SERVER_ENV

DRAIN_S = 2.0
GRACE_S = 10
# Every request spends this long in flight, waiting for its micro-batch. The margins are wide
# because the test shares a small, busy machine.
BATCH_WAIT_S = 1.0
LAST_SENT_S = DRAIN_S - 0.5


def test_sigterm_fails_readiness_first_then_finishes_in_flight_requests_and_exits_0(repo, tmp_path):
    proc, url = start_server(
        repo,
        tmp_path / "server.log",
        {
            **SERVER_ENV,
            "MTS_SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S),
            "MTS_SHUTDOWN_GRACE_SECONDS": str(GRACE_S),
            "MTS_BATCH_MAX_WAIT_MS": str(BATCH_WAIT_S * 1000),
        },
    )
    done: list[tuple[float, float, int | str]] = []  # (sent, finished, status or error)
    ready: list[tuple[float, int]] = []
    stop_sending = threading.Event()
    signalled = threading.Event()

    def send(http: httpx.Client) -> None:
        sent = time.monotonic()
        try:
            status: int | str = http.post("/predict/embed", json={"inputs": "a"}).status_code
        except httpx.HTTPError as exc:
            status = repr(exc)
        done.append((sent, time.monotonic(), status))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop_sending.is_set():
                send(http)

    def last_moment() -> None:
        # Sent just before the drain ends, answered after the listener has closed.
        signalled.wait()
        time.sleep(LAST_SENT_S)
        with httpx.Client(base_url=url, timeout=30) as http:
            send(http)

    def probe() -> None:
        signalled.wait()
        with httpx.Client(base_url=url, timeout=5) as http:
            while True:
                try:
                    ready.append((time.monotonic(), http.get("/readyz").status_code))
                except httpx.TransportError:
                    return  # the listener has closed
                time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(4)]
    threads += [threading.Thread(target=probe), threading.Thread(target=last_moment)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        sigterm_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        signalled.set()
        # Like a load balancer that takes a while to notice: keep sending during the drain, and
        # stop shortly before it ends, so the last requests are in flight when the listener closes.
        time.sleep(LAST_SENT_S)
        stop_sending.set()
        code = proc.wait(timeout=DRAIN_S + GRACE_S + 5)
        exited_at = time.monotonic()
    finally:
        stop_sending.set()
        signalled.set()
        if proc.poll() is None:
            proc.kill()
        for t in threads:
            t.join()
    drain_end = sigterm_at + DRAIN_S
    first_503 = min(at for at, status in ready if status == 503)
    after_signal = [d for d in done if d[0] >= sigterm_at]
    finished_after_drain = [d for d in done if d[1] > drain_end]
    print(
        f"{len(done)} requests, {len(after_signal)} sent after SIGTERM, "
        f"{len(finished_after_drain)} finished after the drain ended; readyz 503 after "
        f"{first_503 - sigterm_at:.2f} s, exit after {exited_at - sigterm_at:.2f} s"
    )
    assert code == 0
    assert [d for d in done if d[2] != 200] == []  # 0 dropped
    assert first_503 < drain_end and all(s == 503 for at, s in ready if at >= first_503)
    assert after_signal and finished_after_drain  # served during the drain and across the close
    assert exited_at - sigterm_at < DRAIN_S + GRACE_S
