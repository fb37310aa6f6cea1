"""JSON answers serialised once, by orjson, from the plain dicts and lists the routes build.

FastAPI turns a returned dict into JSON by walking it with ``jsonable_encoder`` first, then
``json.dumps``; an answer with embeddings holds thousands of floats. Routes return ``JSON``
instead: one orjson call, same document (shortest round-trip floats, UTF-8, no NaN).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
