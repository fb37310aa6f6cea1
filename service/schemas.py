"""Request bodies of the wire format (pydantic), so OpenAPI at /docs documents them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(
        description="One text, or a list of texts; the answer keeps the same shape.",
        examples=["The striker scored twice in the final."],
    )


class MultiPredictRequest(PredictRequest):
    tasks: list[str] = Field(
        min_length=1, description="Tasks to run on every text; the trunk runs once for all."
    )


class ZeroShotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] | list[str] = Field(
        description="Label -> description (a short phrase that embeds the label's meaning), "
        "or a list of labels that describe themselves.",
        examples=[{"sport": "sport, football, matches", "tech": "technology and software"}],
    )
    replace: bool = Field(False, description="Serve a new version if the task exists.")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        None, ge=1, description="Version to serve; default: the newest one older than current."
    )
