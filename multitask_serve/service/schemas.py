"""The service's own wire format (its routes: service/routes.py, service/admin.py): request bodies
(pydantic, so that OpenAPI at /docs documents them) and the error body ``{"error": {"code",
"message"}}`` with its schema (``SERVICE``).

``Texts`` is what every prediction route reads: one text, or a non-empty list of texts (the one
prediction entry point, service/predict.py, refuses an empty list whatever the route).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from multitask_serve.service.http_errors import FRAMEWORK_CODES, STATUS, WireFormat, string

Texts = str | Annotated[list[str], Field(min_length=1)]
# A label or a description: something besides whitespace.
NonBlank = Annotated[str, StringConstraints(pattern=r"\S")]
_NON_BLANK = {"type": "string", "pattern": r"\S"}
# pydantic documents dict keys as patternProperties, which lets any other key through.
LabelMap = Annotated[
    dict[NonBlank, NonBlank],
    Field(min_length=2),
    WithJsonSchema(
        {
            "type": "object",
            "minProperties": 2,
            "propertyNames": _NON_BLANK,
            "additionalProperties": _NON_BLANK,
        }
    ),
]
LabelList = Annotated[list[NonBlank], Field(min_length=2, json_schema_extra={"uniqueItems": True})]


class PredictRequest(BaseModel):
    # strict: a field is its documented JSON type, never coerced (0 is no boolean, "2" no integer).
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: Texts = Field(
        description="One text, or a list of texts; the answer keeps the same shape.",
        examples=["The striker scored twice in the final."],
    )
    truncate: bool | None = Field(
        None,
        description="Cut a text longer than the served length (the answer says truncated) "
        "instead of reading it whole in overlapping windows; unset: the server's default "
        "(MTS_TRUNCATE, false).",
    )


class MultiPredictRequest(PredictRequest):
    tasks: list[str] = Field(
        min_length=1, description="Tasks to run on every text; the trunk runs once for all."
    )


class ZeroShotRequest(BaseModel):
    # Python's idea of whitespace, as the route's checks (str.strip) have it.
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")

    labels: LabelMap | LabelList = Field(
        description="Label -> description (a short phrase that embeds the label's meaning), "
        "or a list of labels that describe themselves; at least two, each label once.",
        examples=[{"sport": "sport, football, matches", "tech": "technology and software"}],
    )
    replace: bool = Field(False, description="Serve a new version if the task exists.")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: int | None = Field(
        None, ge=1, description="Version to serve; default: the newest one older than current."
    )


def service_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "What went wrong, for a client to switch on.",
                    "enum": sorted({*STATUS, *FRAMEWORK_CODES.values(), "http_error"}),
                },
                "message": string("What went wrong, for a person."),
            },
        }
    },
}
# The service's own routes; POST /predict and /predict/{task} run inference.
SERVICE = WireFormat(service_body, ERROR_SCHEMA, inference=(r"/predict(?:/[^/]+)?",))
