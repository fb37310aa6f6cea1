"""What the routes of every wire format work with, as one typed object: ``create_app`` builds
``Services`` once and keeps it on the app; a route reads it with ``services(request.app)``."""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from dataclasses import dataclass

from starlette.applications import Starlette

from multitask_serve.service.engine import Engine
from multitask_serve.service.metrics import Metrics
from multitask_serve.service.pending import PendingTrainer
from multitask_serve.service.predict import Predictor
from multitask_serve.service.registry import HeadRegistry
from multitask_serve.service.settings import Settings
from multitask_serve.service.shadow import Shadows


@dataclass(frozen=True)
class Services:
    settings: Settings
    # Every prediction's way in (service/predict.py), whatever the wire format.
    predictor: Predictor
    registry: HeadRegistry
    shadows: Shadows
    engine: Engine
    metrics: Metrics
    # Head loads (validation, session, probe inference) run here, off the request threads.
    loads: Executor
    # The first run's training of the default heads; None: nothing trains here.
    trainer: PendingTrainer | None
    # The longest text the trunk reads, in tokens, as served.
    max_length: int
    # Set when shutdown begins: /readyz fails from then on while requests are still served.
    draining: threading.Event


def services(app: Starlette) -> Services:
    found: Services = app.state.services
    return found
