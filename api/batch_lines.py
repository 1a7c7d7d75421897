"""A batch's input file, line by line: each line parsed, validated with the request schemas of the OpenAI
route it names (api/completion_schemas.py, as a direct request would be) and planned as a job, or reported
as an error naming its line. Knows tokenizers (through the planners), not the database's batch rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from sqlalchemy.orm import Session

from api.completion_schemas import ChatCompletionCreate, CompletionCreate
from api.errors import describe_validation_error
from api.job_kinds import plan_job
from api.models import visible_model
from shared.errors import CanvasError
from shared.jobs import new_job_id
from shared.models import ModelRecord

SCHEMAS: dict[str, type[CompletionCreate] | type[ChatCompletionCreate]] = {
    "/v1/chat/completions": ChatCompletionCreate,
    "/v1/completions": CompletionCreate,
}


class BatchLine(BaseModel):
    """One line of an input file, as OpenAI's Batch API has them."""

    model_config = ConfigDict(extra="forbid")
    custom_id: StrictStr = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/completions"]
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    """A line that cannot become a job: its number (from 1; None for the file as a whole), why, and the
    field at fault."""

    line: int | None
    code: str
    message: str
    param: str | None
    custom_id: str | None = None

    def as_error(self) -> dict[str, Any]:
        """The entry of the batch's `errors.data` (OpenAI's BatchError)."""
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}

    def as_file_line(self) -> dict[str, Any]:
        """The line of the batch's error file."""
        return {"id": None, "custom_id": self.custom_id, "response": None, "error": self.as_error()}


@dataclass
class PlannedLines:
    """The jobs' column values for the good lines, and the errors of the bad ones."""

    rows: list[dict[str, Any]]
    errors: list[LineError]


def plan_lines(session: Session, content: bytes, endpoint: str, batch: dict[str, Any]) -> PlannedLines:
    """Every non-blank line of `content` planned as a job of the batch (`batch` gives tenant_id, batch_id
    and deadline_at), or reported. Lines that all fail the same way are all reported."""
    planned = PlannedLines([], [])
    seen: set[str] = set()
    models: dict[str, ModelRecord] = {}
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = _plan_line(session, raw, number, endpoint, seen, models, batch["tenant_id"])
        except LineFailure as failure:
            planned.errors.append(failure.error)
            continue
        planned.rows.append({**row, **batch})
    return planned


class LineFailure(Exception):
    def __init__(self, error: LineError) -> None:
        super().__init__(error.message)
        self.error = error


def _plan_line(
    session: Session,
    raw: bytes,
    number: int,
    endpoint: str,
    seen: set[str],
    models: dict[str, ModelRecord],
    tenant_id: str,
) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LineFailure(LineError(number, "invalid_json", f"line {number} is not JSON: {exc}", None)) from None
    custom_id = parsed.get("custom_id") if isinstance(parsed, dict) else None
    custom_id = custom_id if isinstance(custom_id, str) else None

    def fail(code: str, message: str, param: str | None) -> LineFailure:
        return LineFailure(LineError(number, code, f"line {number}: {message}", param, custom_id))

    try:
        line = BatchLine.model_validate(parsed)
    except ValidationError as exc:
        raise fail("invalid_request", *describe_validation_error(exc)) from None
    if line.url != endpoint:
        raise fail("mismatched_url", f"url {line.url!r} is not the batch's endpoint {endpoint!r}", "url")
    if line.custom_id in seen:
        raise fail("duplicate_custom_id", f"custom_id {line.custom_id!r} is used by an earlier line", "custom_id")
    seen.add(line.custom_id)
    try:
        body = SCHEMAS[line.url].model_validate(line.body)
        if body.stream:
            raise fail("invalid_request", "stream is not supported in a batch", "body.stream")
        request = body.job()
        model = models.get(request.model) or visible_model(session, request.model, tenant_id=tenant_id)
        models[request.model] = model
        plan = plan_job(request, model)
    except ValidationError as exc:
        raise fail("invalid_request", *describe_validation_error(exc, "body")) from None
    except CanvasError as exc:
        raise fail("invalid_request", exc.message, f"body.{exc.param}" if exc.param else "body") from None
    return {
        "id": new_job_id(request.kind),
        "kind": request.kind,
        "model": model.name,
        "input": plan.plan.model_dump(exclude_none=True, by_alias=True),
        "input_ids": plan.input_ids,
        "params": plan.params.with_seed().model_dump(),
        "custom_id": line.custom_id,
        "batch_line": number,
    }
