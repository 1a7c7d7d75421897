"""Response shapes of the public routes, as pydantic models: the OpenAPI document's response schemas.

The views still build their JSON with the view functions (shared/views.py, api/*.py); these models say what
that JSON is, and the schemathesis tests (tests/api/test_fuzz.py, bench/fuzz.py) check every response of
every operation against them, so the two cannot drift apart unnoticed. Unknown fields are refused
(`additionalProperties: false`) so a field added to a view must be added here too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.states import JobStatus

Status = Literal["queued", "running", "canceling", "succeeded", "failed", "canceled", "expired"]
assert set(Status.__args__) == {s.value for s in JobStatus}  # type: ignore[attr-defined]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Shape):
    type: str
    message: str
    param: str | None = None
    code: str | None = None  # the OpenAI routes' errors (OpenAI's shape)
    job_id: str | None = None  # the OpenAI routes' errors about a job that exists (it goes on or it ended)
    job_ids: list[str] | None = None  # a completion with several prompts: every job (job_id is the first)


class ErrorBody(_Shape):
    """Every error: {"error": {"type", "message", "param"}}; on the OpenAI routes also `code` (and `job_id`)."""

    error: ErrorDetail


class ServerSentEvent(_Shape):
    """One event of a text/event-stream response (job events: `data` is a JSON object; OpenAI streams:
    a JSON chunk, and `[DONE]` last)."""

    event: str | None = None
    data: str
    id: str | None = None
    retry: int | None = None


class OpenApiDocument(BaseModel):
    """This OpenAPI document."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    paths: dict[str, Any]


class TimelineEntry(_Shape):
    status: str | None
    type: str
    at: datetime
    data: dict[str, Any] | None = None


class Job(_Shape):
    """A job (any kind). `timeline` only on a single job, not in lists."""

    id: str
    object: Literal["job"]
    kind: str
    model: str
    status: Status
    input: dict[str, Any] | None
    params: dict[str, Any]
    output: dict[str, Any] | None
    stats: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None
    priority: int = Field(description="order among its tenant's own queued jobs, higher first")
    lane: Literal["interactive", "batch"] = Field(description="batch: released when no interactive job waits")
    timeline: list[TimelineEntry] | None = None


class JobList(_Shape):
    object: Literal["list"]
    data: list[Job]
    has_more: bool
    next_cursor: str | None


class Model(_Shape):
    """OpenAI's model object (`id`, `object`, `created` in Unix seconds, `owned_by`) and our fields."""

    id: str
    object: Literal["model"]
    created: int
    canvas_length: int
    max_positions: int
    vocab_size: int
    base_model: str | None
    fine_tune: str | None
    owned_by: str
    quantization: str
    weight_bytes: int | None
    created_at: datetime | None


class ModelList(_Shape):
    object: Literal["list"]
    data: list[Model]


class Health(_Shape):
    status: Literal["ok", "degraded"]
    checks: dict[str, str]


class WebhookEndpoint(_Shape):
    """`secret` only when it is shown: at creation and at rotation."""

    id: str
    object: Literal["webhook_endpoint"]
    url: str
    events: list[str]
    description: str | None
    status: str
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime | None
    secret: str | None = None


class WebhookEndpointList(_Shape):
    object: Literal["list"]
    data: list[WebhookEndpoint]


class DeliveryAttempt(_Shape):
    attempt: int
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_excerpt: str | None
    at: datetime


class WebhookDelivery(_Shape):
    id: str
    object: Literal["webhook_delivery"]
    event_type: str
    status: str
    job_id: str | None
    endpoint_id: str | None
    url: str | None
    attempts: int
    last_status_code: int | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    log: list[DeliveryAttempt]


class WebhookDeliveryList(_Shape):
    object: Literal["list"]
    data: list[WebhookDelivery]


class WebhookSecret(_Shape):
    """The tenant's default secret: `secret` is shown only when it is created or rotated."""

    object: Literal["webhook_secret"]
    secret: str | None
    prefix: str
    created_at: datetime


class File(_Shape):
    id: str
    object: Literal["file"]
    purpose: str
    filename: str
    bytes: int
    sha256: str
    lines: int
    created_at: datetime


class FileList(_Shape):
    object: Literal["list"]
    data: list[File]


class FineTune(_Shape):
    id: str
    object: Literal["fine_tune"]
    status: Status
    base_model: str
    training_file: str
    validation_file: str | None
    method: str
    hyperparameters: dict[str, Any]
    quantization: str
    seed: int
    suffix: str | None
    result_model: str | None
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class FineTuneList(_Shape):
    object: Literal["list"]
    data: list[FineTune]


class FineTuneEvent(BaseModel):
    """A training metrics step or a status change; metrics fields vary with what the trainer reports."""

    model_config = ConfigDict(extra="allow")
    id: int
    type: Literal["metrics", "status"]
    at: datetime


class FineTuneEventList(_Shape):
    object: Literal["list"]
    data: list[FineTuneEvent]


class CheckpointView(_Shape):
    object: Literal["checkpoint"]
    step: int
    train_loss: float | None
    created_at: datetime


class CheckpointList(_Shape):
    object: Literal["list"]
    data: list[CheckpointView]


class OpenAICompletion(BaseModel):
    """An OpenAI text or chat completion (their full shape: the openai SDK's types)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["text_completion", "chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int] | None = None


class BatchRequestCounts(_Shape):
    total: int
    completed: int
    failed: int


class BatchError(_Shape):
    """A bad line of the input file (`line` counts from 1)."""

    code: str
    message: str
    param: str | None
    line: int | None


class BatchErrors(_Shape):
    object: Literal["list"]
    data: list[BatchError]


class Batch(_Shape):
    """OpenAI's Batch object; times in Unix seconds."""

    id: str
    object: Literal["batch"]
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None


class BatchList(_Shape):
    object: Literal["list"]
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Readiness(_Shape):
    """/readyz: whether this API process can serve requests (its database answers)."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, Literal["ok", "error"]]


class Liveness(_Shape):
    """/livez: this API process answers HTTP."""

    status: Literal["ok"]
