"""The `infill` kind: known text pinned in the canvas, holes denoised between it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.job_kinds.generate import GenerationOutput


class Segment(BaseModel):
    """A hole of `hole` tokens, or known `text` pinned as its token `ids`."""

    model_config = ConfigDict(extra="forbid")
    hole: int | None = Field(None, ge=1)
    text: str | None = None
    ids: list[int] | None = None

    @model_validator(mode="after")
    def _hole_or_text(self) -> Segment:
        if (self.hole is None) == (self.ids is None):
            raise ValueError("a segment is a hole or a text with its ids")
        return self

    @property
    def width(self) -> int:
        return self.hole if self.hole is not None else len(self.ids or ())


class InfillPlan(BaseModel):
    """The prompt's text (`prefix`), then the canvas as segments; `template` when the client sent one."""

    model_config = ConfigDict(extra="forbid")
    prefix: str
    segments: list[Segment]
    template: str | None = None

    def as_recorded(self) -> dict:
        """The plan as the job's `input` column holds it (the shape clients see under `input`)."""
        return self.model_dump(exclude_none=True)


class Fill(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    token_ids: list[int]


class InfillOutput(GenerationOutput):
    """The whole text (prefix, fills and known text) and each hole's fill, in order."""

    fills: list[Fill]
