"""Running the app under uvicorn with a graceful, readiness-first shutdown.

On SIGTERM a pod is taken out of its Service's endpoints, but load balancers and kube-proxy learn
that with a delay: requests keep arriving for a few seconds. So the first SIGTERM only starts a
drain: ``/readyz`` answers 503 while everything else keeps serving. When the drain ends (or on
SIGINT, or on a second signal) uvicorn stops accepting connections, lets in-flight requests finish
within the grace period, runs the lifespan shutdown and the process exits with status 0.

With ``MTS_ADMIN_PORT`` the same server listens on a second socket: one lifespan, one drain and
one shutdown for both; which routes each port serves is service/listeners.py's.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from multitask_serve.service import logs
from multitask_serve.service.settings import Settings
from multitask_serve.service.state import services

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain period between the first SIGTERM and the shutdown."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None], drain_s: float):
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_s = drain_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is None:
            self._on_drain()
            drain = self._drain_s if sig == signal.SIGTERM else 0.0
            self._exit_at = time.monotonic() + drain
            log.info("signal %d: readiness fails now, shutdown in %.1f s", sig, drain)
        elif not self.should_exit:
            self._exit_at = time.monotonic()  # a second signal ends the drain
        elif sig == signal.SIGINT:
            self.force_exit = True  # Ctrl+C during shutdown: stop waiting for requests

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's own version re-raises the signal after a graceful shutdown, which makes the
        # process die "killed by SIGTERM"; a shutdown that finished its work exits with 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve(app: FastAPI, settings: Settings) -> None:
    """Serve until a signal, then drain, finish in-flight requests and return.

    Logging goes through the root logger's one handler (``logs.configure``, in
    ``settings.log_format``): uvicorn gets no log config of its own, so its loggers have no
    handlers and propagate there, with the request id on its lines. Its access lines are off:
    the app writes its own (service/observability.py), with route, tasks and duration.
    """
    logs.configure(settings.log_format)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        loop=settings.event_loop,
        http=settings.http_parser,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        timeout_keep_alive=settings.keep_alive_seconds,
        access_log=False,
    )
    server = DrainingServer(config, services(app).draining.set, settings.shutdown_drain_seconds)
    if settings.admin_port is None:
        server.run()
        return
    # Both bound before anything is served (each logs "Uvicorn running on ..."; a port in use
    # ends the process with uvicorn's own message), then listening once the lifespan started.
    admin = copy.copy(config)
    admin.port = settings.admin_port
    server.run(sockets=[config.bind_socket(), admin.bind_socket()])
