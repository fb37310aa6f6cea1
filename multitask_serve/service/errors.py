"""Errors the core raises: a code a client can switch on and a message, nothing of HTTP.

Each wire format turns them into its own answer (statuses, headers, bodies) in one module,
``service/http_errors.py``; nothing here knows a status, a header or a route.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    code = "unauthorized"


class Forbidden(ServiceError):
    code = "forbidden"


class NotFound(ServiceError):
    code = "not_found"


class UnknownTask(NotFound):
    """A request named a task that is not served; the HTTP layer may say where the served are."""

    def __init__(self, task: str, served_here: str | None = None) -> None:
        """``served_here``: the replica set's task selector, when it leaves ``task`` out."""
        if served_here is None:
            super().__init__(f"unknown task {task!r}")
        else:
            super().__init__(
                f"task {task!r} is not served by this replica set (MTS_TASKS={served_here})"
            )
        self.task = task


class Conflict(ServiceError):
    code = "conflict"


class TooLarge(ServiceError):
    code = "too_large"


class InvalidInput(ServiceError):
    code = "invalid_input"


class Overloaded(ServiceError):
    """Refused for load: retrying shortly may succeed."""

    code = "overloaded"


class Unavailable(ServiceError):
    """Cannot serve now (stopped, stuck or shutting down): retrying later may succeed."""

    code = "unavailable"
