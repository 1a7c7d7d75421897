"""/v1/batches: OpenAI's Batch API on the job queue: create from an uploaded JSONL file, get, list, cancel.

A batch starts `validating`: every line is checked first, then the batch becomes `in_progress` with one job
per line (inserted in bounded chunks in one transaction: all of them or none), or `failed` with the bad
lines, by number, in `errors` and in its error file, and no job. With `allow_partial` (Canvas's extension)
the good lines run and the bad ones go to the error file. A short file is validated within the create
request; a longer one in the background (api/batch_validation.py), so create answers at once. The jobs
run behind interactive ones (the batch lane of shared/fairness.py); the sweeper finalizes the batch
(shared/batch_finalizer.py).
"""

from __future__ import annotations

import logging
from typing import Literal

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import authenticate_request, current_principal
from api.batch_validation import VALIDATION_LEASE, release_now, validate
from api.bodies import read_json_object
from api.files import get_file
from api.jobs import _request_hash, idempotency_key
from api.limits import check_submission
from api.openapi import IDEMPOTENCY_KEY, describe
from api.pagination import parse_limit
from api.response_schemas import Batch as BatchShape
from api.response_schemas import BatchList
from api.state import db_session, settings
from shared.batches import (
    BatchStatus,
    batch_view,
    cancel_batch,
    completion_window,
    counts_of,
    new_batch_id,
    request_counts,
)
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import Batch, utcnow
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
    allow_partial: StrictBool = Field(
        False,
        description="Canvas's extension: run the valid lines and report the bad ones (with their line numbers) in "
        "the error file, instead of failing the whole batch",
    )


@bp.post("")
@describe(
    "Create a batch from an uploaded JSONL file",
    body=BatchCreate,
    responses={200: BatchShape},
    headers=[IDEMPOTENCY_KEY],
)
def create_batch() -> Response:
    """A short file is validated here (the answer is `in_progress` or `failed`); a longer one answers
    `validating` and is validated in the background (api/batch_validation.py)."""
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
    if not source.content.strip():
        raise InvalidRequest(f"file {source.id} holds no request", "input_file_id")
    session = db_session()
    now = utcnow()
    batch = Batch(
        id=new_batch_id(),
        tenant_id=tenant_id,
        endpoint=body.endpoint,
        input_file_id=source.id,
        completion_window=body.completion_window,
        status=BatchStatus.VALIDATING.value,
        batch_metadata=body.metadata,
        allow_partial=body.allow_partial,
        validation_lease_until=now + VALIDATION_LEASE,
        created_at=now,
        expires_at=now + window,
        total=0,
        completed=0,
        failed=0,
        idempotency_key=key,
        request_hash=digest if key else None,
    )
    check_submission(session, tenant_id)  # like a job: the rate counts the batch once
    session.add(batch)
    session.flush()
    inline = source.lines <= settings().batch_inline_lines
    if inline:
        validate(session, batch, batch.validation_lease_until)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key made the batch first
        session.rollback()
        if key and (existing := _replay(tenant_id, key, digest)):
            return _batch_response(existing)
        raise
    log.info("batch %s: %d lines, status %s", batch.id, source.lines, batch.status)
    if batch.status == BatchStatus.IN_PROGRESS.value:
        release_now(batch.id)
    elif not inline:
        current_app.extensions["canvas.batch_validator"].submit(batch.id, batch.validation_lease_until)
    return _batch_response(batch)


def _replay(tenant_id: str, key: str, digest: str) -> Batch | None:
    """The batch this Idempotency-Key made (the same body), or None; another body is a 400."""
    batch = db_session().scalar(select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key))
    if batch is not None and batch.request_hash != digest:
        raise InvalidRequest("this Idempotency-Key was used with a different request body", "Idempotency-Key")
    return batch


def _batch_response(batch: Batch) -> Response:
    return jsonify(batch_view(batch, request_counts(db_session(), batch)))


def cancel_validating(session: Session, batch: Batch) -> bool:
    """validating -> cancelled, with its batch.cancelled message; False if the batch is past validating."""
    now = utcnow()
    stmt = (
        update(Batch)
        .where(Batch.id == batch.id, Batch.status == BatchStatus.VALIDATING.value)
        .values(status=BatchStatus.CANCELLED.value, cancelling_at=now, cancelled_at=now, validation_lease_until=None)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.refresh(batch)
    record_tenant_event(session, batch.tenant_id, "batch.cancelled", batch_view(batch, request_counts(session, batch)))
    return True


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
    none runs. A batch still validating is `cancelled` at once (no line became a job). An ended batch is a
    409."""
    session = db_session()
    batch = get_batch(batch_id)
    if batch.status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        raise Conflict(f"batch {batch.id} is {batch.status}; only an unfinished batch can be cancelled", "batch_id")
    if not cancel_validating(session, batch):
        session.refresh(batch)  # validated meanwhile: cancel its lines
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
