"""JSON answers serialised once, by orjson, from the plain dicts and lists the routes build.

FastAPI turns a returned dict into JSON by walking it with ``jsonable_encoder`` first, then
``json.dumps``; an answer with embeddings holds thousands of floats. Routes return ``JSON``
instead: one orjson call, same document (shortest round-trip floats, UTF-8, no NaN). A traced
request's serialisation is its ``mts.response`` span (service/tracing.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from multitask_serve.service.tracing import current


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        traced = current.get()
        if traced is None:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        return traced.serialise(lambda: orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY))
