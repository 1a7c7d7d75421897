"""Request bodies. Unknown fields are refused (422), never silently ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from api.webhook_schemas import WebhookTarget
from shared.contracts import PRIORITY_MAX, PRIORITY_MIN, GenerationParams
from shared.job_kinds.generate import MAX_CHOICES, MAX_TOP_LOGPROBS
from shared.job_kinds.sudoku import MAX_TRIES

ChatRole = Literal["system", "user", "assistant"]


class ChatMessage(BaseModel):
    """One chat turn. The role is one of three (a role is written into the template's markup, so free text
    there could open turns of its own); the content and the name are text, tokenized as text
    (api/tokenization.py), and the name holds no newline or other control character."""

    model_config = ConfigDict(extra="forbid")
    role: ChatRole
    content: StrictStr
    name: StrictStr | None = Field(
        None,
        max_length=256,
        pattern=r"^[^\x00-\x1f\x7f]*$",  # no newline or other control character: it may sit in the markup
        description="the speaker's name, handed to the chat template (tokenized as text; no control characters)",
    )


class JobCreate(BaseModel):
    """POST /v1/jobs. `generate`: exactly one of `prompt`, `input_ids`, `messages` (checked by the view);
    `infill`: `template`, or `prefix`/`suffix` with `hole_tokens`; `sudoku`: `grid`, `tries` (seeds denoised
    side by side; the first valid grid answers) and `rules` (mask digits a row, column or box already holds)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["generate", "infill", "sudoku"] = "generate"
    model: StrictStr = Field(min_length=1, max_length=200)
    prompt: StrictStr | None = None
    input_ids: list[StrictInt] | None = Field(None, min_length=1)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    prefix: StrictStr | None = None
    suffix: StrictStr | None = None
    hole_tokens: StrictInt | None = Field(None, ge=1, le=4096)
    template: StrictStr | None = None
    grid: StrictStr | None = Field(None, max_length=400)
    tries: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_TRIES,
        description="sudoku: seeds denoised side by side (try i: seed + i); the first valid grid answers",
    )
    rules: StrictBool | None = Field(
        None,
        description="sudoku (default true): a blank may not take a digit that a given, or a cell the last step "
        "kept, already holds in its row, column or box; false: the model alone, blanks restricted to digits",
    )
    n: StrictInt | None = Field(
        None, ge=1, le=MAX_CHOICES, description="generate: choices, seeds denoised side by side (choice i: seed + i)"
    )
    logprobs: StrictInt | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="generate: each token's log-probability under its canvas's final denoising step, with this "
        "many alternatives",
    )
    params: GenerationParams = Field(default_factory=GenerationParams)
    webhook: WebhookTarget | None = None
    deadline_seconds: StrictInt | None = Field(
        None, ge=1, le=7 * 24 * 3600, description="not started within this many seconds: the job expires"
    )
    priority: StrictInt | None = Field(
        None,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="order among this tenant's own queued jobs (higher first, default 0); it never moves a job "
        "ahead of another tenant's",
    )

    def given_inputs(self) -> list[str]:
        return [name for name in ("prompt", "input_ids", "messages") if getattr(self, name) is not None]


class CompletionJob(JobCreate):
    """The generate job of a POST /v1/completions request (or a Batch API line for it): a JobCreate that may
    also echo its prompt (OpenAI's `echo`: every choice of the answer begins with the prompt's text). The
    native /v1/jobs route does not take it: its output is not an OpenAI answer."""

    echo: StrictBool = False


class JobListQuery(BaseModel):
    """GET /v1/jobs query parameters (read by the view; this model describes them in the OpenAPI document)."""

    status: Literal["queued", "running", "canceling", "succeeded", "failed", "canceled", "expired"] | None = None
    model: str | None = None
    kind: str | None = None
    limit: int | None = Field(None, ge=1, le=100, description="page size (default 20)")
    cursor: str | None = Field(None, description="next_cursor of the previous page")


class DeliveriesQuery(BaseModel):
    status: Literal["pending", "delivering", "delivered", "failed"] | None = None


class FineTuneEventsQuery(BaseModel):
    after: int | None = Field(None, ge=0, description="only events with a greater id")


class FileUpload(BaseModel):
    """POST /v1/files, a multipart form."""

    purpose: Literal["fine-tune", "batch"]
    file: bytes = Field(description="the file (JSON lines: fine-tuning examples, or a batch's requests)")
