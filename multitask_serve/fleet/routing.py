"""Which task a request is for, read as the fleet's router reads it: from the path where the route
names one, else from the JSON body (``tasks`` of POST /predict, ``model`` of OpenAI's
/v1/embeddings). The router sends a request to a replica that holds that task's head; one that
names none (health, listings, /metrics) goes to any replica.
"""

from __future__ import annotations

import json
import re

from multitask_serve.modelrepo.types import TASK_NAME_RE

# Routes whose path names the task, as the service mounts them (service/routes.py, oip.py, tei.py,
# admin.py), the task matched as the repository checks names. The admin upload's is the path's.
PATH_TASK = re.compile(
    rf"^/(?:predict|v2/models|tei|admin/heads)/(?P<task>{TASK_NAME_RE.pattern.strip('^$')})(?:/|$)"
)
# Routes whose JSON body names the task(s).
BODY_TASK_KEYS = {"/predict": "tasks", "/v1/embeddings": "model"}
# The most of a body the router parses to find its task: a bigger one goes to any replica (the
# replica that gets it still answers it, loading the head if it must).
MAX_PARSED_BODY = 1 << 20


def task_of(path: str, body: bytes = b"") -> str | None:
    """The task a request is for, or None when it names none the router can read cheaply. For a
    multi-task request, its first task: the replica holding it loads the others if it must."""
    match = PATH_TASK.match(path)
    if match is not None:
        return match.group("task")
    key = BODY_TASK_KEYS.get(path.rstrip("/") or "/")
    if key is None or not body or len(body) > MAX_PARSED_BODY:
        return None
    try:
        named = json.loads(body).get(key)
    except (ValueError, AttributeError):  # not JSON, or not an object: the replica says why
        return None
    if isinstance(named, list) and named and isinstance(named[0], str):
        return named[0]
    return named if isinstance(named, str) else None
