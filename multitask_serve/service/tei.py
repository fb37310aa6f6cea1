"""Hugging Face Text Embeddings Inference (TEI) routes, one TEI "model" per task: ``/tei/<task>``.

Clients written for TEI (``huggingface_hub.InferenceClient`` with ``model="<base>/tei/<task>"``,
plain HTTP callers of ``/embed``, ``/predict``, ``/tokenize``, ``/info``) point at a task
unchanged. Shapes follow TEI's router (router/src/http/types.rs, server.rs): ``/embed`` answers
``[[float]]``, ``/predict`` ``[{"label", "score"}]`` sorted by score (a list of those for a list of
texts), ``/tokenize`` ``[[{"id", "text", "special", "start", "stop"}]]``. TEI's root route embeds
or predicts by the model's kind; for a classifier it always answers one list per text, the shape
``InferenceClient.text_classification`` reads (it takes the first row). Token classification
answers ``[{"entity_group", "score", "word", "start", "end"}]``, what
``InferenceClient.token_classification`` reads. Everything goes through the one prediction entry
point (service/predict.py ``Predictor``).

Errors take TEI's ``{"error", "error_type"}`` form with TEI's statuses, as its router answers them
(router/src/http/server.rs ``From<&ErrorType> for StatusCode``; core/src/tokenization.rs):
400 ``Empty`` for an empty list or an empty text; 413 ``Validation`` for more texts than
``max_client_batch_size`` or a text over the served length without ``truncate``; 424 ``Backend``
for what the served model cannot do (``/embed`` on a classifier, ``/predict`` on an embedding
task, ``raw_scores``); 429 ``Overloaded``; 503 ``Unhealthy``. ``error_type`` is spelled as TEI's
serializer writes it (the variant name). Cases TEI has no answer of its own for: an unknown task
is a 404, and a body that fails validation a 422, both ``Validation``. Core errors map through
``TEI`` (its body, ``error_type`` per core code, its schema); the TEI-only cases are ``TeiError``s
answered by ``TeiRoute``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from multitask_serve.modelrepo.types import Kind
from multitask_serve.service.errors import TooLarge
from multitask_serve.service.http_errors import WireFormat, route_class, string
from multitask_serve.service.postprocess import unit
from multitask_serve.service.residency import ServedHead
from multitask_serve.service.responses import JSON
from multitask_serve.service.state import services
from multitask_serve.service.types import TaskResult

# Text Embeddings Inference's error_type per core code: TEI's ErrorType variant names, which serde
# writes as they are spelled (router/src/lib.rs derives Serialize with no renaming).
TEI_ERROR_TYPES: Mapping[str, str] = {
    "too_large": "Validation",
    "invalid_input": "Validation",
    "not_found": "Validation",
    "method_not_allowed": "Validation",
    "unsupported_media_type": "Validation",
    "overloaded": "Overloaded",
    "unavailable": "Unhealthy",
    "internal": "Backend",
}


def tei_body(code: str, message: str) -> dict[str, str]:
    return {"error": message, "error_type": TEI_ERROR_TYPES.get(code, "Backend")}


ERROR_SCHEMA = {
    "title": "TeiError",
    "description": "Text Embeddings Inference's error body.",
    "type": "object",
    "required": ["error", "error_type"],
    "properties": {
        "error": string("What went wrong."),
        "error_type": {
            "type": "string",
            "enum": sorted({*TEI_ERROR_TYPES.values(), "Backend", "Empty"}),
        },
    },
}
# A failed inference is TEI's 424 (backend). POST /tei/{task}[/embed|/predict] runs inference.
TEI = WireFormat(tei_body, ERROR_SCHEMA, {500: 424}, inference=(r"/tei/[^/]+(?:/embed|/predict)?",))


class TeiError(Exception):
    """An answer TEI gives with a status and ErrorType of its own, for a case the core does not
    single out (an empty input, a model that cannot do what is asked)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


class TeiRoute(route_class(TEI)):  # type: ignore[misc]
    """TEI's route class: core errors, the body limit and invalid bodies as ``route_class(TEI)``
    answers them, and ``TeiError``s with their own status and ErrorType."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except TeiError as exc:
                body = {"error": exc.message, "error_type": exc.error_type}
                return JSONResponse(body, exc.status)

        return handle


router = APIRouter(prefix="/tei", tags=["text embeddings inference"], route_class=TeiRoute)


# One text or a list of texts, none empty, as documented; an empty one is still read, so that it
# gets TEI's own answer (400 ``Empty``, ``_texts``) rather than a validation error (413).
TeiTexts = Annotated[
    str | list[str],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ]
        }
    ),
]


class TeiRequest(BaseModel):
    # TEI ignores fields it does not read (huggingface_hub sends "parameters"), and so do we; the
    # fields it reads take their JSON type only, as TEI's do (0 is no boolean).
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: TeiTexts = Field(description="One text, or a list of texts.")
    truncate: bool = Field(
        False, description="Cut texts longer than the served length; false: refuse them (413)."
    )


class EmbedRequest(TeiRequest):
    normalize: bool = Field(True, description="Scale every embedding to unit length.")


class PredictRequest(TeiRequest):
    raw_scores: bool = Field(
        False,
        description="Not supported (424): heads serve probabilities only.",
        json_schema_extra={"const": False},
    )


class RootRequest(EmbedRequest, PredictRequest):
    pass


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: TeiTexts
    add_special_tokens: bool = True


def _no_empty_list(inputs: str | list[str]) -> None:
    """An empty list is TEI's ``Empty`` (400), before any other check."""
    if inputs == []:
        raise TeiError(400, "Empty", "`inputs` cannot be empty")


def _no_empty_text(texts: list[str]) -> None:
    """An empty text is TEI's ``Empty`` (400), once the texts passed ``Predictor.texts`` (which
    refuses too many texts as ``Validation``, 413)."""
    for i, text in enumerate(texts):
        if not text:
            raise TeiError(400, "Empty", f"inputs[{i}] is empty: `inputs` cannot be empty")


def _cannot(message: str) -> TeiError:
    """What the served model cannot do: TEI's ``Backend`` error, 424 Failed Dependency."""
    return TeiError(424, "Backend", message)


async def _run(request: Request, task: str, body: TeiRequest, kinds: set[str]) -> TaskResult:
    def check_heads(heads: Mapping[str, ServedHead]) -> None:
        kind = str(heads[task].spec.kind)
        if kind not in kinds:
            raise _cannot(f"task {task!r} is a {kind} head; this route serves {sorted(kinds)}")

    app = services(request.app)
    _no_empty_list(body.inputs)
    done = await app.predictor.predict(
        body.inputs, [task], check_texts=_no_empty_text, check_heads=check_heads, truncate=True
    )
    if not body.truncate and any(done.truncated):
        index = done.truncated.index(True)
        raise TooLarge(
            f"inputs[{index}] is longer than the served maximum of {app.max_length} tokens; "
            "send truncate=true to cut it"
        )
    return done.results[task]


def _embeddings(result: TaskResult, normalize: bool) -> list[list[float]]:
    vectors = cast(list[list[float]], result.outputs)
    return [unit(v) for v in vectors] if normalize else vectors


def _classes(result: TaskResult) -> list[list[dict[str, Any]]]:
    """Per text, every label with its probability, highest first (TEI's ``Prediction``)."""
    rows = []
    for out in cast(list[dict[str, Any]], result.outputs):
        scores: dict[str, float] = out["scores"]
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        rows.append([{"label": label, "score": score} for label, score in ranked])
    return rows


def _entities(result: TaskResult) -> list[list[dict[str, Any]]]:
    """Per text, its entities in huggingface_hub's ``TokenClassificationOutputElement`` shape."""
    return [
        [
            {
                "entity_group": e["entity"],
                "score": e["score"],
                "word": e["text"],
                "start": e["start"],
                "end": e["end"],
            }
            for e in out
        ]
        for out in cast(list[list[dict[str, Any]]], result.outputs)
    ]


CLASSIFIERS = {str(Kind.SEQUENCE_CLASSIFICATION), str(Kind.ZERO_SHOT)}


def _no_raw_scores(body: PredictRequest) -> None:
    if body.raw_scores:
        raise _cannot("raw_scores=true is not supported: heads serve probabilities only")


@router.post("/{task}/embed", summary="TEI /embed: one embedding per text")
async def embed(task: str, body: EmbedRequest, request: Request) -> JSON:
    result = await _run(request, task, body, {str(Kind.EMBEDDING)})
    return JSON(_embeddings(result, body.normalize))


@router.post("/{task}/predict", summary="TEI /predict: label scores, highest first")
async def predict(task: str, body: PredictRequest, request: Request) -> JSON:
    _no_raw_scores(body)
    result = await _run(request, task, body, CLASSIFIERS)
    rows = _classes(result)
    return JSON(rows[0] if isinstance(body.inputs, str) else rows)


@router.post("/{task}", summary="TEI's root route: embed or predict by the task's kind")
async def root(task: str, body: RootRequest, request: Request) -> JSON:
    # Answers are written as JSON directly, as /predict does, skipping FastAPI's encoder.
    _no_raw_scores(body)
    result = await _run(
        request, task, body, CLASSIFIERS | {str(Kind.EMBEDDING), str(Kind.TOKEN_CLASSIFICATION)}
    )
    if result.kind == Kind.EMBEDDING:
        return JSON(_embeddings(result, body.normalize))
    if result.kind == Kind.TOKEN_CLASSIFICATION:
        entities = _entities(result)
        return JSON(entities[0] if isinstance(body.inputs, str) else entities)
    # One list per text even for one text: InferenceClient.text_classification reads row 0.
    return JSON(_classes(result))


@router.post("/{task}/tokenize", summary="TEI /tokenize: the tokens the trunk reads")
async def tokenize(task: str, body: TokenizeRequest, request: Request) -> list[list[dict]]:
    predictor = services(request.app).predictor
    _no_empty_list(body.inputs)
    texts = predictor.texts(body.inputs)
    _no_empty_text(texts)
    predictor.resolve([task])
    return [
        [
            {
                "id": t.id,
                "text": t.text if t.special else text[t.start : t.stop],
                "special": t.special,
                "start": None if t.special else t.start,
                "stop": None if t.special else t.stop,
            }
            for t in tokens
            if body.add_special_tokens or not t.special
        ]
        for text, tokens in zip(texts, predictor.tokens(texts), strict=True)
    ]


@router.get("/{task}/info", summary="TEI /info: what the task is and its limits")
async def info(task: str, request: Request) -> dict[str, Any]:
    app = services(request.app)
    head = app.predictor.resolve([task])[task]
    settings = app.settings
    spec = head.spec
    model_type: dict[str, Any]
    if spec.kind == Kind.EMBEDDING:
        model_type = {"embedding": {"pooling": spec.pooling}}
    else:
        id2label = {str(i): label for i, label in enumerate(spec.labels)}
        label2id = {label: i for i, label in enumerate(spec.labels)}
        model_type = {"classifier": {"id2label": id2label, "label2id": label2id}}
    return {
        "model_id": task,
        "model_sha": app.engine.trunk_spec.fingerprint,
        "model_dtype": settings.trunk_precision,
        "model_type": model_type,
        "max_concurrent_requests": settings.max_in_flight_requests,
        "max_input_length": app.max_length,
        "max_batch_tokens": settings.batch_max_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_batch_texts,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "version": request.app.version,
        "sha": None,
        "docker_label": None,
        "kind": str(spec.kind),
        "head_version": head.version,
    }
