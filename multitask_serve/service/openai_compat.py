"""OpenAI's embeddings API for the embedding tasks: ``POST /v1/embeddings``, ``GET /v1/models``.

Code written for the ``openai`` SDK (``OpenAI(base_url="<base>/v1").embeddings.create(model=task,
input=...)``) and the frameworks built on it read embeddings from a task unchanged. ``model`` is
the task's name; ``input`` one text or a list of texts; ``encoding_format`` ``float`` or
``base64`` (little-endian float32 bytes); ``usage`` counts the tokens the trunk read (the served
tokenizer, special tokens included, after truncation). Vectors are the task's embeddings scaled to
unit length, as OpenAI's are. Predictions go through the one prediction entry point
(service/predict.py ``Predictor``); errors take OpenAI's ``{"error": {"message", "type", "param",
"code"}}`` form and statuses (``OPENAI``): a request that cannot be served
as sent (an empty list or an empty text, which OpenAI refuses too, too many texts, a task that is
not an embedding task, an invalid body) is a 400 ``invalid_request_error``, an unknown model a 404
with code ``model_not_found``, overload a 429 with Retry-After.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.errors import InvalidInput
from multitask_serve.service.http_errors import WireFormat, route_class, string
from multitask_serve.service.postprocess import unit
from multitask_serve.service.residency import ServedHead
from multitask_serve.service.responses import JSON
from multitask_serve.service.schemas import Texts
from multitask_serve.service.state import services

# OpenAI's error code for the core codes it has one for; others keep the core's code.
OPENAI_CODES: Mapping[str, str] = {"not_found": "model_not_found"}


def openai_body(code: str, message: str) -> dict[str, dict[str, str | None]]:
    kind = "invalid_request_error" if code in ("invalid_input", "too_large", "not_found") else code
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": None,
            "code": OPENAI_CODES.get(code, code),
        }
    }


ERROR_SCHEMA = {
    "title": "OpenAIError",
    "description": "OpenAI's error body.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": string("What went wrong."),
                "type": string("invalid_request_error, or the error's code."),
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
# A request it cannot serve is a 400. POST /v1/embeddings runs inference.
OPENAI = WireFormat(openai_body, ERROR_SCHEMA, {422: 400, 413: 400}, inference=(r"/v1/embeddings",))

router = APIRouter(prefix="/v1", tags=["openai"], route_class=route_class(OPENAI))


class EmbeddingsRequest(BaseModel):
    # The SDK may send fields we do not serve (user); they are ignored as OpenAI ignores them.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(description="The embedding task's name.")
    input: Texts = Field(description="One text, or a list of texts.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Only the task's own width is served.")


@router.post("/embeddings", summary="OpenAI embeddings of an embedding task")
async def embeddings(body: EmbeddingsRequest, request: Request) -> JSON:
    def check_texts(texts: list[str]) -> None:
        for i, text in enumerate(texts):
            if not text:
                raise InvalidInput(f"input[{i}] is empty; send non-empty strings")

    def check_heads(heads: Mapping[str, ServedHead]) -> None:
        spec = heads[body.model].spec
        if spec.kind != Kind.EMBEDDING:
            raise InvalidInput(f"model {body.model!r} is a {spec.kind} task, not an embedding task")
        if body.dimensions is not None and body.dimensions != spec.output_width:
            raise InvalidInput(
                f"dimensions={body.dimensions}: model {body.model!r} serves "
                f"{spec.output_width} dimensions only"
            )

    predictor = services(request.app).predictor
    done = await predictor.predict(
        body.input, [body.model], check_texts=check_texts, check_heads=check_heads
    )
    tokens = sum(done.tokens)
    data = []
    vectors = cast(list[list[float]], done.results[body.model].outputs)
    for i, vector in enumerate(vectors):
        embedding: list[float] | str = unit(vector)
        if body.encoding_format == "base64":
            embedding = base64.b64encode(np.asarray(embedding, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSON({"object": "list", "data": data, "model": body.model, "usage": usage})


@router.get("/models", summary="OpenAI model list: the embedding tasks")
async def models(
    request: Request,
    loaded: Annotated[bool | None, Query(description="Only (not) loaded heads")] = None,
    after: Annotated[str | None, Query(description="Only models named after this one")] = None,
    limit: Annotated[int | None, Query(ge=1, description="At most this many models")] = None,
) -> dict[str, Any]:
    """The embedding tasks in name order, in OpenAI's list shape. Beyond OpenAI's model list, it
    filters (``loaded``) and pages as OpenAI's paged lists do: ``after`` and ``limit`` in,
    ``has_more``, ``first_id`` and ``last_id`` out."""
    page = services(request.app).registry.page(loaded, Kind.EMBEDDING, after, limit)
    data = [
        {"id": one.task, "object": "model", "created": 0, "owned_by": "multitask-serve"}
        for one in page.heads
    ]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.next is not None,
    }
