"""Request bodies of the webhook routes, and the job's own webhook target."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from shared.webhooks import DEFAULT_EVENTS

EventType = Literal[
    "job.started", "job.succeeded", "job.failed", "job.canceled", "job.expired", "job.canvas",
    "fine_tune.started", "fine_tune.succeeded", "fine_tune.failed", "fine_tune.canceled",
    "batch.completed", "batch.failed", "batch.expired", "batch.cancelled",
]  # fmt: skip


class WebhookTarget(BaseModel):
    """A job's own receiver, signed with the tenant's default secret (GET /v1/webhook_secret)."""

    model_config = ConfigDict(extra="forbid")
    url: StrictStr = Field(min_length=1, max_length=2048)
    events: list[EventType] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: StrictStr = Field(min_length=1, max_length=2048)
    events: list[EventType] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)
    description: StrictStr | None = Field(None, max_length=500)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: StrictStr | None = Field(None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(None, min_length=1)
    description: StrictStr | None = Field(None, max_length=500)
    enabled: StrictBool | None = None
