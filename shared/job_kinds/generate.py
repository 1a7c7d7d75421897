"""The `generate` kind: a prompt (text, chat messages or token ids) continued by denoising canvases."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GeneratePlan(BaseModel):
    """The input as given (exactly one of the three); the prompt ids are recorded beside it on the job."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    input_ids: list[int] | None = None


class GenerationOutput(BaseModel):
    """What every generation kind answers: the text (cut before the first stop string), its ids, and why it
    ended (`eos`, `length`, `stop`, `canceled`)."""

    model_config = ConfigDict(extra="forbid")
    text: str
    token_ids: list[int]
    finish_reason: str
