"""/v1/batches: OpenAI's Batch API on the job queue: create from an uploaded JSONL file, get, list, cancel.

Creating a batch validates every line first; a file with a bad line makes a `failed` batch (the bad lines,
with their numbers, in `errors` and in its error file) and no job. A good file becomes one job per line,
inserted in bounded chunks in the batch's own transaction: all of them or none. The jobs run behind
interactive ones (the batch lane of shared/fairness.py); the sweeper finalizes the batch (shared/batch_finalizer.py).
"""

from __future__ import annotations

import json
import logging
from typing import Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import authenticate_request, current_principal
from api.batch_lines import PlannedLines, plan_lines
from api.bodies import read_json_object
from api.files import get_file
from api.jobs import _request_hash, idempotency_key
from api.limits import check_submission
from api.openapi import IDEMPOTENCY_KEY, describe
from api.pagination import parse_limit
from api.response_schemas import Batch as BatchShape
from api.response_schemas import BatchList
from api.state import db_session, producer, settings
from shared.batches import (
    BatchStatus,
    batch_view,
    cancel_batch,
    completion_window,
    counts_of,
    insert_lines,
    new_batch_id,
    request_counts,
)
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.fairness import release
from shared.files import new_file
from shared.models import Batch, Job, utcnow
from shared.webhooks import record_tenant_event

log = logging.getLogger(__name__)
bp = Blueprint("batches", __name__, url_prefix="/v1/batches")
bp.before_request(authenticate_request)
MAX_REPORTED_ERRORS = 1000  # in the batch's `errors`; its error file has every bad line


class BatchListQuery(BaseModel):
    """GET /v1/batches query parameters (read by the view; this model describes them)."""

    after: str | None = Field(None, description="the last batch id of the previous page")
    limit: int | None = Field(None, ge=1, le=100, description="page size (default 20)")


class BatchCreate(BaseModel):
    """POST /v1/batches, as OpenAI's."""

    model_config = ConfigDict(extra="forbid")
    input_file_id: StrictStr = Field(min_length=1, max_length=40)
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: StrictStr = "24h"
    metadata: dict[StrictStr, StrictStr] | None = Field(None, max_length=16)


@bp.post("")
@describe(
    "Create a batch from an uploaded JSONL file",
    body=BatchCreate,
    responses={200: BatchShape},
    headers=[IDEMPOTENCY_KEY],
)
def create_batch() -> Response:
    raw = read_json_object()
    body = BatchCreate.model_validate(raw)
    tenant_id = current_principal().tenant_id
    key, digest = idempotency_key(), _request_hash(raw)
    if key and (existing := _replay(tenant_id, key, digest)):
        return _batch_response(existing)
    window = completion_window(body.completion_window)
    source = get_file(body.input_file_id, "input_file_id")
    if source.purpose != "batch":
        raise InvalidRequest(
            f"file {source.id} has purpose {source.purpose!r}; upload it with purpose 'batch'", "input_file_id"
        )
    if source.lines > settings().max_batch_lines:
        limit = settings().max_batch_lines
        raise InvalidRequest(f"the file has {source.lines} lines; a batch takes at most {limit}", "input_file_id")
    session = db_session()
    now = utcnow()
    batch = Batch(
        id=new_batch_id(),
        tenant_id=tenant_id,
        endpoint=body.endpoint,
        input_file_id=source.id,
        completion_window=body.completion_window,
        status=BatchStatus.IN_PROGRESS.value,
        batch_metadata=body.metadata,
        created_at=now,
        in_progress_at=now,
        expires_at=now + window,
        total=0,
        completed=0,
        failed=0,
        idempotency_key=key,
        request_hash=digest if key else None,
    )
    fields = {"tenant_id": tenant_id, "batch_id": batch.id, "deadline_at": batch.expires_at}
    planned = plan_lines(session, source.content, body.endpoint, fields)
    if not planned.rows and not planned.errors:
        raise InvalidRequest(f"file {source.id} holds no request", "input_file_id")
    check_submission(session, tenant_id)  # after validation, like a job: the rate counts the batch once
    session.add(batch)
    session.flush()
    if planned.errors:
        _fail(session, batch, planned)
    else:
        batch.total = len(planned.rows)
        insert_lines(session, planned.rows, now)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key made the batch first
        session.rollback()
        if key and (existing := _replay(tenant_id, key, digest)):
            return _batch_response(existing)
        raise
    log.info("batch %s: %d lines, %d bad, status %s", batch.id, batch.total, len(planned.errors), batch.status)
    if batch.status == BatchStatus.IN_PROGRESS.value:
        _release_now(batch.id)
    return _batch_response(batch)


def _replay(tenant_id: str, key: str, digest: str) -> Batch | None:
    """The batch this Idempotency-Key made (the same body), or None; another body is a 400."""
    batch = db_session().scalar(select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key))
    if batch is not None and batch.request_hash != digest:
        raise InvalidRequest("this Idempotency-Key was used with a different request body", "Idempotency-Key")
    return batch


def _batch_response(batch: Batch) -> Response:
    return jsonify(batch_view(batch, request_counts(db_session(), batch)))


def _fail(session: Session, batch: Batch, planned: PlannedLines) -> None:
    """A batch whose file has bad lines: `failed` at once, with every bad line in its error file."""
    batch.status, batch.failed_at = BatchStatus.FAILED.value, batch.created_at
    batch.errors = [e.as_error() for e in planned.errors[:MAX_REPORTED_ERRORS]]
    content = "".join(json.dumps(e.as_file_line()) + "\n" for e in planned.errors).encode()
    error_file = new_file(batch.tenant_id, "batch_output", f"{batch.id}_errors.jsonl", content)
    session.add(error_file)
    session.flush()
    batch.error_file_id = error_file.id
    record_tenant_event(session, batch.tenant_id, "batch.failed", batch_view(batch, request_counts(session, batch)))


def _release_now(batch_id: str) -> None:
    """Start the batch's first lines now (as far as its queues have room) rather than at the next sweep; if
    the broker or the database does not answer, the sweeper does it."""
    session = db_session()
    try:
        queues = session.scalars(select(Job.queue).where(Job.batch_id == batch_id).distinct()).all()
        for queue in queues:
            release(session, producer(), settings(), queue)
            session.commit()
    except Exception:
        session.rollback()
        log.exception("could not release batch jobs now; the sweeper will")


def get_batch(batch_id: str) -> Batch:
    """The tenant's batch, or NotFound (another tenant's batch too)."""
    batch = db_session().get(Batch, batch_id)
    if batch is None or batch.tenant_id != current_principal().tenant_id:
        raise NotFound(f"no batch with id {batch_id!r}", "batch_id")
    return batch


@bp.get("/<batch_id>")
@describe("Get a batch", responses={200: BatchShape})
def get_batch_route(batch_id: str) -> Response:
    batch = get_batch(batch_id)
    return jsonify(batch_view(batch, request_counts(db_session(), batch)))


@bp.post("/<batch_id>/cancel")
@describe("Cancel a batch", responses={200: BatchShape})
def cancel_batch_route(batch_id: str) -> Response:
    """in_progress -> cancelling (queued lines canceled at once, running ones stopped); `cancelled` once
    none runs. An ended batch is a 409."""
    session = db_session()
    batch = get_batch(batch_id)
    if batch.status not in (BatchStatus.IN_PROGRESS.value, BatchStatus.CANCELLING.value):
        raise Conflict(f"batch {batch.id} is {batch.status}; only an in-progress batch can be cancelled", "batch_id")
    cancel_batch(session, batch)
    session.commit()
    session.refresh(batch)
    return jsonify(batch_view(batch, request_counts(session, batch)))


@bp.get("")
@describe("List batches, newest first", query=BatchListQuery, responses={200: BatchList})
def list_batches() -> Response:
    """The tenant's batches, newest first; `after` (a batch id) and `limit` (1-100, default 20) page."""
    unknown = set(request.args) - {"after", "limit"}
    if unknown:
        raise InvalidRequest(f"unknown query parameter {sorted(unknown)[0]!r}", sorted(unknown)[0])
    limit = parse_limit(request.args.get("limit"))
    session = db_session()
    stmt = select(Batch).where(Batch.tenant_id == current_principal().tenant_id)
    if after := request.args.get("after"):
        last = get_batch(after)
        older = or_(Batch.created_at < last.created_at, and_(Batch.created_at == last.created_at, Batch.id < last.id))
        stmt = stmt.where(older)
    rows = list(session.scalars(stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    counts = counts_of(session, page)
    data = [batch_view(b, counts[b.id]) for b in page]
    first, last_id = (page[0].id, page[-1].id) if page else (None, None)
    return jsonify(
        {"object": "list", "data": data, "first_id": first, "last_id": last_id, "has_more": len(rows) > limit}
    )
