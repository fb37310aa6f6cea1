"""Open Inference Protocol (KServe v2) endpoints, beside the service's own wire format.

KServe and Triton tooling (``tritonclient``, KServe's InferenceService probes, load generators)
speak this protocol, so they can point at the service unchanged. Each task is a *model*; the head
version it serves is the model version. A model takes one BYTES tensor ``text`` and answers with
the tensors its kind produces (``outputs_meta``). Both the JSON tensor form and the binary tensor
extension (which ``tritonclient`` uses by default) are read and written. Predictions go through
the same prediction entry point as ``/predict`` (service/predict.py ``Predictor``: micro-batcher,
limits, metrics). Everything the protocol knows is here: its routes, its request as it reads it
(``parse_infer``), its tensors per form of output (``TENSORS``), its error body ``{"error":
"message"}`` with its schema and statuses (``OIP``: v2 clients treat any malformed request as a
400).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from multitask_serve.modelrepo.types import HeadSpec
from multitask_serve.service.errors import InvalidInput, NotFound
from multitask_serve.service.http_errors import WireFormat, route_class, string
from multitask_serve.service.listing import ListingQuery
from multitask_serve.service.residency import ServedHead
from multitask_serve.service.state import services
from multitask_serve.service.types import JobResult, TaskResult

INPUT_NAME = "text"
# Triton's name for the header that says where the JSON ends and binary tensor data begins.
HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "multitask-serve"


def oip_body(_code: str, message: str) -> dict[str, str]:
    return {"error": message}


ERROR_SCHEMA = {
    "title": "OipError",
    "description": "The Open Inference Protocol's error body.",
    "type": "object",
    "required": ["error"],
    "properties": {"error": string("What went wrong.")},
}
# Open Inference Protocol v2: v2 clients treat any malformed request as a 400 Bad Request.
# POST /v2/models/{task}[/versions/{v}]/infer runs inference.
OIP = WireFormat(
    oip_body,
    ERROR_SCHEMA,
    {422: 400},
    inference=(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer",),
)

router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=route_class(OIP))

_ANY_PARAMETERS = {"type": "object", "description": "Extension parameters."}
# The request body is read by parse_infer, not by a model, so the document says what it accepts:
# one BYTES tensor named "text" (the binary tensor extension sends its data after the JSON, which
# the Inference-Header-Content-Length header then measures).
INFER_REQUEST = {
    "title": "InferenceRequest",
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "binary_data_output": {"type": "boolean"},
                "truncate": {
                    "type": "boolean",
                    "description": "Cut texts longer than the served length instead of reading "
                    "them whole in overlapping windows (unset: the server's default).",
                },
            },
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape", "data"],
                "properties": {
                    "name": {"const": INPUT_NAME},
                    "datatype": {"const": "BYTES"},
                    "shape": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0},
                        "description": "Its product is the number of texts in data.",
                    },
                    "data": {"type": "array", "items": {"type": "string"}},
                    "parameters": _ANY_PARAMETERS,
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _ANY_PARAMETERS},
            },
        },
    },
}
INFER_DOC: dict[str, Any] = {
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": INFER_REQUEST}},
        }
    },
    "responses": {
        200: {
            "description": "The output tensors; with binary outputs asked for, the JSON header "
            "then the tensors' bytes (Inference-Header-Content-Length says where they begin).",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


# Each numeric datatype's little-endian layout in binary tensor data.
_NUMPY = {"FP32": "<f4", "INT32": "<i4", "BOOL": "?"}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # BYTES, FP32, INT32 or BOOL
    shape: list[int]
    data: list[Any]  # flat, row-major

    def encode(self, binary: bool) -> tuple[dict[str, Any], bytes]:
        """The tensor's JSON entry, and its bytes when sent as binary data (else b"")."""
        entry: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        if not binary:
            entry["data"] = self.data
            return entry, b""
        if self.datatype == "BYTES":
            raw = b"".join(
                struct.pack("<I", len(item)) + item for item in (d.encode() for d in self.data)
            )
        else:
            raw = np.asarray(self.data, dtype=_NUMPY[self.datatype]).tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        return entry, raw


Rows = list[Any]  # a task's results, one per text


@dataclass(frozen=True)
class OipTensor:
    """One output tensor: a row per text, maybe ``width`` wide, and how its flat data is made
    from a task's results and labels."""

    name: str
    datatype: str  # BYTES, FP32, INT32 or BOOL
    data: Callable[[Rows, tuple[str, ...]], list[Any]] = field(compare=False)
    # Whether each row holds the head's output width of values (else one value per row).
    wide: bool = False

    def shape(self, rows: int, width: int) -> list[int]:
        return [rows, width] if self.wide else [rows]


_CLASSES = (
    OipTensor("label", "BYTES", lambda rows, labels: [r["label"] for r in rows]),
    OipTensor("score", "FP32", lambda rows, labels: [r["score"] for r in rows]),
    OipTensor(
        "scores",
        "FP32",
        lambda rows, labels: [r["scores"][label] for r in rows for label in labels],
        wide=True,
    ),
)
# The tensors of a prediction per form of output (the kind's decode trait, as service/outputs.py
# FORMS); every kind's answer ends with ``TRUNCATED``.
TENSORS: Mapping[str, tuple[OipTensor, ...]] = MappingProxyType(
    {
        "vector": (
            OipTensor("embedding", "FP32", lambda rows, _: [x for r in rows for x in r], wide=True),
        ),
        "classes": _CLASSES,
        # One JSON list of spans per text.
        "spans": (OipTensor("entities", "BYTES", lambda rows, _: [json.dumps(r) for r in rows]),),
    }
)
# Whether each text was cut to the trunk's maximum length, and how many windows each was read in
# (their data is the request's, not a head's).
TRUNCATED = OipTensor("truncated", "BOOL", lambda rows, _: [])
WINDOWS = OipTensor("windows", "INT32", lambda rows, _: [])


def tensors_of(spec: HeadSpec) -> tuple[OipTensor, ...]:
    return TENSORS[spec.traits.decode]


def outputs_meta(spec: HeadSpec) -> list[dict[str, Any]]:
    """The output tensors a head's kind produces (shapes with -1 for the batch)."""
    return [
        {"name": t.name, "datatype": t.datatype, "shape": t.shape(-1, spec.output_width)}
        for t in (*tensors_of(spec), TRUNCATED, WINDOWS)
    ]


def _tensors(spec: HeadSpec, result: TaskResult, done: JobResult) -> list[Tensor]:
    rows: list[Any] = result.outputs
    n, width = len(rows), spec.output_width
    made = [
        Tensor(t.name, t.datatype, t.shape(n, width), t.data(rows, spec.labels))
        for t in tensors_of(spec)
    ]
    return [
        *made,
        Tensor(TRUNCATED.name, TRUNCATED.datatype, TRUNCATED.shape(n, width), done.truncated),
        Tensor(WINDOWS.name, WINDOWS.datatype, WINDOWS.shape(n, width), done.windows),
    ]


@dataclass(frozen=True)
class InferRequest:
    texts: list[str]
    id: str | None
    wanted: dict[str, bool] | None  # requested output -> binary; None: every output
    binary_default: bool
    truncate: bool | None = None  # parameters.truncate; None: the server's default


def _decode_bytes(raw: bytes) -> list[bytes]:
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInput("binary BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidInput("binary BYTES data ends inside an element")
        items.append(raw[at : at + size])
        at += size
    return items


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _parameters(entry: dict[str, Any], what: str) -> dict[str, Any]:
    """An entry's ``parameters``: an object, or absent."""
    params = entry.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"'parameters' of {what} must be an object")
    return params


def _texts(tensor: dict[str, Any], binary: bytes) -> list[str]:
    if tensor.get("name") != INPUT_NAME or tensor.get("datatype") != "BYTES":
        raise InvalidInput(
            f"expected one input named {INPUT_NAME!r} with datatype BYTES, got "
            f"{tensor.get('name')!r} ({tensor.get('datatype')!r})"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput("input 'shape' must be a list of non-negative integers")
    params = _parameters(tensor, "input 'text'")
    if "binary_data_size" in params:
        items: list[Any] = _decode_bytes(binary)
    elif "data" in tensor:
        items = _flatten(tensor["data"])
    else:
        raise InvalidInput("input 'text' has neither 'data' nor binary data")
    if len(items) != math.prod(shape):
        raise InvalidInput(f"input 'text' has shape {shape} but {len(items)} elements")
    texts = []
    for item in items:
        if isinstance(item, bytes):
            try:
                item = item.decode()
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"input 'text' holds bytes that are not UTF-8: {exc}") from exc
        if not isinstance(item, str):
            raise InvalidInput("input 'text' elements must be strings")
        texts.append(item)
    return texts


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Read a v2 inference request: JSON alone, or JSON then binary tensor data."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {header_length!r} does not fit the body")
        size = int(header_length)
    try:
        request = json.loads(body[:size])
    except ValueError as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InvalidInput("the inference request must be a JSON object with an 'inputs' list")
    if len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
        raise InvalidInput(f"send exactly one input, {INPUT_NAME!r} (BYTES)")
    texts = _texts(request["inputs"][0], body[size:])
    params = _parameters(request, "the inference request")
    binary_default = bool(params.get("binary_data_output"))
    truncate = params.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise InvalidInput("parameters.truncate must be true or false")
    wanted = None
    if request.get("outputs") is not None:
        outputs = request["outputs"]
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise InvalidInput("'outputs' must be a list of objects with a 'name'")
        wanted = {
            o["name"]: bool(
                _parameters(o, f"output {o['name']!r}").get("binary_data", binary_default)
            )
            for o in outputs
        }
    request_id = None if request.get("id") is None else str(request["id"])
    return InferRequest(texts, request_id, wanted, binary_default, truncate)


def _head(request: Request, task: str, version: str | None = None) -> ServedHead:
    head = services(request.app).predictor.resolve([task])[task]
    if version is not None and version != str(head.version):
        raise NotFound(
            f"model {task!r} serves version {head.version}, not {version!r}; a stored version "
            "is served again by rolling back to it"
        )
    return head


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {
        "name": request.app.title,
        "version": request.app.version,
        "extensions": ["binary_tensor_data"],
    }


@router.get("/health/live", summary="The process lives")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready", summary="A real inference through trunk and a head", responses={503: {}}
)
async def ready(request: Request) -> dict[str, bool]:
    await services(
        request.app
    ).predictor.ready()  # raises Unavailable (503) if the probe inference fails
    return {"ready": True}


def _metadata(head: ServedHead) -> dict[str, Any]:
    spec = head.spec
    return {
        "name": spec.task,
        "versions": [str(head.version)],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs_meta(spec),
        # Beyond the protocol's schema, which clients tolerate: what the scores' columns mean.
        "parameters": {
            "kind": str(spec.kind),
            "labels": list(spec.labels),
            "branch_layer": spec.branch_layer,
        },
    }


async def _infer(request: Request, head: ServedHead) -> Response:
    parsed = parse_infer(await request.body(), request.headers.get(HEADER_LENGTH))
    names = [o["name"] for o in outputs_meta(head.spec)]
    unknown = sorted(set(parsed.wanted or ()) - set(names))
    if unknown:
        raise InvalidInput(f"model {head.spec.task!r} has no output {unknown[0]!r}; it has {names}")
    task = head.spec.task
    predictor = services(request.app).predictor
    done = await predictor.predict(parsed.texts, {task: head}, truncate=parsed.truncate)
    results = done.results
    entries, chunks = [], []
    for tensor in _tensors(head.spec, results[task], done):
        if parsed.wanted is not None and tensor.name not in parsed.wanted:
            continue
        binary = parsed.binary_default if parsed.wanted is None else parsed.wanted[tensor.name]
        entry, raw = tensor.encode(binary)
        entries.append(entry)
        chunks.append(raw)
    body: dict[str, Any] = {
        "model_name": task,
        "model_version": str(results[task].version),
        "outputs": entries,
    }
    if parsed.id is not None:
        body["id"] = parsed.id
    header = json.dumps(body).encode()
    if not any(chunks):
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _index_request(body: bytes) -> bool | None:
    """The repository index request's ``ready`` (None when the body leaves it out)."""
    if not body.strip():
        return None
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"the index request is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise InvalidInput("the index request must be a JSON object")
    ready = request.get("ready")
    if ready is not None and not isinstance(ready, bool):
        raise InvalidInput("'ready' must be true or false")
    return ready


@router.post("/repository/index", summary="Model repository index", responses={400: {}})
async def repository_index(request: Request, query: Annotated[ListingQuery, Depends()]) -> Response:
    """The model repository extension's index: every served task, in name order. Each is READY:
    a head that is not loaded is loaded by the first request for it (within MTS_HEAD_MEMORY_MB),
    so ``"ready": true`` in the body leaves none out; ``parameters.loaded`` says whether it is
    loaded now. Beyond the protocol, the query filters (``loaded``, ``kind``) and pages
    (``after``, ``limit``); a page that is not the last has a ``Link`` header with
    ``rel="next"``."""
    _index_request(await request.body())
    page = services(request.app).registry.page(**dataclasses.asdict(query))
    index = [
        {
            "name": one.task,
            "version": str(one.head.version),
            "state": "READY",
            "reason": "" if one.loaded else "not loaded: the first request loads it",
            "parameters": {
                "kind": str(one.head.spec.kind),
                "loaded": one.loaded,
                "pinned": one.pinned,
            },
        }
        for one in page.heads
    ]
    headers = {}
    if page.next is not None:
        asked = dataclasses.replace(query, after=page.next)
        kept = {
            k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in dataclasses.asdict(asked).items()
            if v is not None
        }
        headers["Link"] = f'<{request.url.path}?{urlencode(kept)}>; rel="next"'
    return Response(json.dumps(index), media_type="application/json", headers=headers)


@router.get("/models/{task}", summary="Model metadata")
async def model_metadata(request: Request, task: str) -> dict[str, Any]:
    if _is_alias(request, task):
        return _alias_metadata(request, task)
    return _metadata(_head(request, task))


@router.get("/models/{task}/versions/{version}", summary="Model metadata of one version")
async def version_metadata(request: Request, task: str, version: str) -> dict[str, Any]:
    return _metadata(_head(request, task, version))


def _is_alias(request: Request, name: str) -> bool:
    """Whether ``name`` is MTS_OIP_MODEL_ALIAS, the server as a whole, and no served task's."""
    state = services(request.app)
    alias = state.settings.oip_model_alias
    return alias is not None and name == alias and name not in state.registry.snapshot()


def _alias_metadata(request: Request, name: str) -> dict[str, Any]:
    """The alias as a model: the server, with no tensors of its own (each task is a model)."""
    return {
        "name": name,
        "versions": [],
        "platform": PLATFORM,
        "inputs": [],
        "outputs": [],
        "parameters": {"models": len(services(request.app).registry.snapshot())},
    }


# A head is in the registry only after a real probe inference passed: served means ready.
@router.get("/models/{task}/ready", summary="Model readiness", responses={503: {}})
async def model_ready(request: Request, task: str) -> dict[str, Any]:
    if _is_alias(request, task):  # ready as the server is: raises Unavailable (503) if not
        await services(request.app).predictor.ready()
        return {"name": task, "ready": True}
    return {"name": _head(request, task).spec.task, "ready": True}


@router.get("/models/{task}/versions/{version}/ready", summary="Readiness of one version")
async def version_ready(request: Request, task: str, version: str) -> dict[str, Any]:
    return {"name": _head(request, task, version).spec.task, "ready": True}


@router.post("/models/{task}/infer", summary="Inference", **INFER_DOC)
async def model_infer(request: Request, task: str) -> Response:
    if _is_alias(request, task):
        raise InvalidInput(
            f"model {task!r} stands for this server, which serves one model per task: infer on "
            "/v2/models/<task>/infer (POST /v2/repository/index lists them)"
        )
    return await _infer(request, _head(request, task))


@router.post(
    "/models/{task}/versions/{version}/infer", summary="Inference on one version", **INFER_DOC
)
async def version_infer(request: Request, task: str, version: str) -> Response:
    return await _infer(request, _head(request, task, version))
