"""Request bodies of the OpenAI-compatible endpoints, and how they become a `generate` job.

The OpenAI fields that mean something for block diffusion are taken: `max_tokens` (or
`max_completion_tokens`), `temperature` (scales the released schedule: 1.0 is t 0.4 -> 0.8), `stop`,
`seed`, `stream`, `stream_options.include_usage`, and `n` = 1. Sampling knobs of autoregressive decoders
(`top_p`, penalties, `logprobs`, ...) are refused with a 422 naming them, never silently ignored. The
`canvas` field is our extension: any `GenerationParams` field (entropy bound, steps, ...).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from api.schemas import ChatMessage, JobCreate
from shared.contracts import GenerationParams
from shared.errors import InvalidRequest

RELEASED_T = (0.4, 0.8)  # t_min, t_max of the released schedule: temperature 1.0
OPENAI_NAMES = {"max_new_tokens": "max_tokens", "t_min": "temperature", "t_max": "temperature", "stop": "stop"}
COLDEST = 0.0025  # temperature 0 (greedy in OpenAI's terms) -> t_min = 0.001: effectively argmax


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr = Field(min_length=1, max_length=200)
    max_tokens: StrictInt | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=10.0)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = Field(1, ge=1, le=1, description="one choice per request: submit more requests for more")
    canvas: dict[str, Any] | None = Field(None, description="Canvas extension: any GenerationParams field")

    def params(self, max_tokens: int | None) -> GenerationParams:
        """The job's parameters: `canvas` first, then the OpenAI fields (a field set both ways is a 422)."""
        mapped: dict[str, Any] = {}
        if max_tokens is not None:
            mapped["max_new_tokens"] = max_tokens
        if self.temperature is not None:
            scale = max(self.temperature, COLDEST)
            mapped["t_min"], mapped["t_max"] = RELEASED_T[0] * scale, RELEASED_T[1] * scale
        if self.stop is not None:
            mapped["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.seed is not None:
            mapped["seed"] = self.seed
        both = sorted(set(mapped) & set(self.canvas or {}))
        if both:
            raise InvalidRequest(f"canvas.{both[0]} is also set by an OpenAI field: give it once", f"canvas.{both[0]}")
        try:
            return GenerationParams.model_validate({**(self.canvas or {}), **mapped})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "t_max"  # a cross-field check: the temperatures
            param = OPENAI_NAMES.get(field, "") if field in mapped else f"canvas.{field}"
            message = first["msg"].removeprefix("Value error, ")
            raise InvalidRequest(f"{param or 'canvas'}: {message}", param or "canvas") from None


class CompletionCreate(_Common):
    """POST /v1/completions."""

    prompt: StrictStr | list[StrictStr]

    def job(self) -> JobCreate:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise InvalidRequest("send one prompt per request (a list must hold exactly one)", "prompt")
        return JobCreate(model=self.model, prompt=prompts[0], params=self.params(self.max_tokens))


class ChatCompletionCreate(_Common):
    """POST /v1/chat/completions: the messages rendered with the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=32768)

    def job(self) -> JobCreate:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise InvalidRequest("give max_completion_tokens or max_tokens, not both", "max_tokens")
        limit = self.max_completion_tokens or self.max_tokens
        return JobCreate(model=self.model, messages=self.messages, params=self.params(limit))
