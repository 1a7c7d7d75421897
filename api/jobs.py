"""/v1/jobs: submit, get, list, cancel. Views parse, persist with an outbox record, publish, return."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import authenticate_request, current_principal
from api.bodies import read_json_object
from api.errors import InvalidHeader
from api.job_kinds import plan_job
from api.limits import check_submission
from api.models import visible_model
from api.openapi import IDEMPOTENCY_KEY, describe
from api.pagination import decode_cursor, encode_cursor, parse_limit
from api.response_schemas import Job as JobShape
from api.response_schemas import JobList
from api.schemas import JobCreate, JobListQuery
from api.state import db_session, publish_after_commit, publish_status
from api.webhooks import check_webhook_url
from shared.errors import InvalidRequest
from shared.jobs import (
    create_job,
    get_job,
    job_view,
    new_job_id,
    queued_event,
    request_cancel,
    served_by,
    timeline,
)
from shared.logs import bind
from shared.metrics import JOBS_SUBMITTED
from shared.models import Job, utcnow
from shared.states import JobStatus

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
MAX_IDEMPOTENCY_KEY = 200  # the column's length (jobs.idempotency_key)
bp.before_request(authenticate_request)


def _job_response(session: Session, job: Job, status: int = 200) -> Response:
    response = jsonify(job_view(job, timeline(session, job.id)))
    response.status_code = status
    return response


def _request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay_idempotent(session: Session, tenant_id: str, key: str, digest: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.request_hash != digest:
        raise InvalidRequest("this Idempotency-Key was used with a different request body", "Idempotency-Key")
    return job


def idempotency_key() -> str | None:
    """The request's Idempotency-Key: None when absent; an empty, over-long or NUL-holding one is a 400
    (an empty header is a client bug, not "no key": treating it as a key would join unrelated requests)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key.strip():
        raise InvalidHeader(
            "Idempotency-Key is empty: send 1 to 200 characters, or leave the header out", "Idempotency-Key"
        )
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidHeader(
            f"Idempotency-Key has {len(key)} characters; at most {MAX_IDEMPOTENCY_KEY}", "Idempotency-Key"
        )
    if "\x00" in key:
        raise InvalidHeader("Idempotency-Key may not contain the NUL character", "Idempotency-Key")
    return key


def part_key(key: str, part: int) -> str:
    """The Idempotency-Key of part `part` of a request that makes several jobs: `key#part` (a key too long
    for that is replaced by its SHA-256 first), so a replay of the request finds each part's job."""
    suffix = f"#{part}"
    if len(key) + len(suffix) > MAX_IDEMPOTENCY_KEY:
        key = hashlib.sha256(key.encode()).hexdigest()
    return key + suffix


@bp.post("")
@describe("Submit a job", body=JobCreate, responses={202: JobShape, 200: JobShape}, headers=[IDEMPOTENCY_KEY])
def submit_job() -> Response:
    raw = read_json_object()
    job, created = accept_job(JobCreate.model_validate(raw), raw)
    if not created:
        return _job_response(db_session(), job, 200)
    # Not read back: once the job is committed, a database that fails now must not answer an error for it
    # (a client would submit it again). Its timeline is its queued event.
    response = jsonify(job_view(job, [queued_event(job)]))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job_route", job_id=job.id)
    return response


def accept_job(body: JobCreate, raw: dict[str, Any], part: int | None = None) -> tuple[Job, bool]:
    """Record and enqueue a validated job for the request's tenant, or find the one its Idempotency-Key
    made (same body). Returns (job, created). `part`: the job is part `part` of a request that makes several
    (a completion with several prompts): its key is the request's key and the part (part_key). Raises
    InvalidRequest naming the field that is wrong, and RateLimited past the tenant's limits (a replay is
    never limited)."""
    principal = current_principal()
    session = db_session()
    model = visible_model(session, body.model)
    key = idempotency_key()
    if key and part is not None:
        key = part_key(key, part)
    digest = _request_hash(raw)
    if key and (existing := _replay_idempotent(session, principal.tenant_id, key, digest)):
        return existing, False
    if body.webhook is not None:
        check_webhook_url(body.webhook.url, "webhook.url")
    planned = plan_job(body, model)
    check_submission(session, principal.tenant_id)  # after validation: a 422 does not use up the budget
    job = Job(
        id=new_job_id(body.kind),
        tenant_id=principal.tenant_id,
        kind=body.kind,
        model=model.name,
        input=planned.plan.model_dump(exclude_none=True, by_alias=True),
        input_ids=planned.input_ids,
        params=planned.params.with_seed().model_dump(),
        webhook=body.webhook.model_dump() if body.webhook else None,
        idempotency_key=key,
        request_hash=digest if key else None,
        deadline_at=utcnow() + timedelta(seconds=body.deadline_seconds) if body.deadline_seconds else None,
        priority=body.priority or 0,
    )
    try:
        outbox = create_job(session, job)  # flushes: a duplicate key fails here, or at the commit
        served = served_by(session, job.model)  # read before the commit: nothing after it may fail the answer
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won the insert
        session.rollback()
        existing = _replay_idempotent(session, principal.tenant_id, key, digest) if key else None
        if existing is None:
            raise
        return existing, False
    JOBS_SUBMITTED.labels(job.kind, served).inc()
    publish_status(job.id, JobStatus.QUEUED.value)  # before the task exists, so it precedes "running"
    publish_after_commit(outbox.queue)
    bind(job_id=job.id, model=job.model)
    log.info("job %s accepted: %s on %s", job.id, job.kind, job.model)
    return job, True


@bp.get("/<job_id>")
@describe("Get a job, with its timeline", responses={200: JobShape})
def get_job_route(job_id: str) -> Response:
    session = db_session()
    return _job_response(session, get_job(session, job_id, current_principal().tenant_id))


def _filters(args: Any) -> list[Any]:
    conditions: list[Any] = []
    if (status := args.get("status")) is not None:
        if status not in {s.value for s in JobStatus}:
            allowed = ", ".join(s.value for s in JobStatus)
            raise InvalidRequest(f"status must be one of {allowed}", "status")
        conditions.append(Job.status == status)
    if (model := args.get("model")) is not None:
        conditions.append(Job.model == model)
    if (kind := args.get("kind")) is not None:
        conditions.append(Job.kind == kind)
    return conditions


@bp.get("")
@describe("List jobs, newest first", query=JobListQuery, responses={200: JobList})
def list_jobs() -> Response:
    unknown = set(request.args) - {"status", "model", "kind", "limit", "cursor"}
    if unknown:
        raise InvalidRequest(f"unknown query parameter {sorted(unknown)[0]!r}", sorted(unknown)[0])
    limit = parse_limit(request.args.get("limit"))
    stmt = select(Job).where(Job.tenant_id == current_principal().tenant_id, *_filters(request.args))
    if cursor := request.args.get("cursor"):
        created, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < row_id)))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(db_session().scalars(stmt))
    page, has_more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if has_more else None
    return jsonify(
        {"object": "list", "data": [job_view(j) for j in page], "has_more": has_more, "next_cursor": next_cursor}
    )


@bp.post("/<job_id>/cancel")
@describe("Cancel a job", responses={200: JobShape})
def cancel_job(job_id: str) -> Response:
    """A queued job is canceled at once; a running one becomes `canceling` until the worker stops it."""
    session = db_session()
    job = get_job(session, job_id, current_principal().tenant_id)
    if request_cancel(session, job):
        publish_status(job.id, job.status)
    return _job_response(session, job)
