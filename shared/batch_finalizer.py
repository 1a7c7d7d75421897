"""Ending batches, in the sweeper: expiry past the completion window, then finalization once no line runs.

Finalization is two transactions, each a conditional step, so any number of sweepers may run it and a
crash between them is picked up by the next sweep: (1) `in_progress`/`cancelling` -> `finalizing` when the
batch has no queued or running job; (2) a `finalizing` batch (row locked) gets its output file (one line
per answered request) and error file (one per request that was not answered), its counts, its final status
(`completed`, `expired`, `cancelled`) and its webhook message, all committed together.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from shared.batches import ACTIVE_JOB, OPEN, BatchStatus, batch_view, end_queued_lines
from shared.db import session_scope
from shared.files import new_file
from shared.job_errors import JobError, JobErrorCode
from shared.models import Batch, Job, StoredFile, utcnow
from shared.openai_responses import Shape, completion_body, error_status, job_error
from shared.settings import Settings
from shared.states import JobStatus
from shared.webhooks import record_tenant_event

READ_CHUNK = 500
_ACTIVE = exists(select(Job.id).where(Job.batch_id == Batch.id, Job.status.in_(ACTIVE_JOB)))
FINAL_EVENTS = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.EXPIRED: "batch.expired",
    BatchStatus.CANCELLED: "batch.cancelled",
    BatchStatus.FAILED: "batch.failed",
}


def sweep_batches(settings: Settings) -> int:
    """Expire overdue batches' queued lines, then finalize every batch whose lines all ended. Returns how
    many batches were finalized."""
    with session_scope(settings.database_url) as session:
        expire_overdue_batches(session)
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Batch)
            .where(Batch.status.in_(OPEN), ~_ACTIVE)
            .values(status=BatchStatus.FINALIZING.value, finalizing_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    with session_scope(settings.database_url) as session:
        due = list(session.scalars(select(Batch.id).where(Batch.status == BatchStatus.FINALIZING.value)))
    finalized = 0
    for batch_id in due:
        with session_scope(settings.database_url) as session:
            finalized += finalize(session, batch_id)
    return finalized


def expire_overdue_batches(session: Session) -> int:
    """The queued lines of in-progress batches past their window become `expired` (running ones finish)."""
    now = utcnow()
    overdue = select(Batch.id).where(Batch.status == BatchStatus.IN_PROGRESS.value, Batch.expires_at <= now)
    expired = 0
    for batch_id in session.scalars(overdue).all():
        message = "the request was not started within the batch's completion window"
        error = JobError(JobErrorCode.EXPIRED, message).as_dict()
        expired += end_queued_lines(session, batch_id, JobStatus.EXPIRED, error)
    return expired


def finalize(session: Session, batch_id: str) -> int:
    """Write a `finalizing` batch's files and end it (1), or do nothing if another sweeper has it or did it
    (0). The caller's transaction commits everything at once."""
    stmt = select(Batch).where(Batch.id == batch_id, Batch.status == BatchStatus.FINALIZING.value)
    batch = session.scalar(stmt.with_for_update(skip_locked=True))
    if batch is None:
        return 0
    output, errors, counts = _write_lines(session, batch)
    now = utcnow()
    final = _final_status(session, batch)
    if output:
        batch.output_file_id = _store(session, batch, "output", output)
    if errors:
        batch.error_file_id = _store(session, batch, "errors", errors)
    batch.total, batch.completed, batch.failed = counts
    batch.status = final.value
    setattr(batch, {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[final], now)
    session.flush()
    record_tenant_event(session, batch.tenant_id, FINAL_EVENTS[final], batch_view(batch, request_counts_of(batch)))
    return 1


def request_counts_of(batch: Batch) -> dict[str, int]:
    return {"total": batch.total, "completed": batch.completed, "failed": batch.failed}


def _final_status(session: Session, batch: Batch) -> BatchStatus:
    if batch.cancelling_at is not None:
        return BatchStatus.CANCELLED
    expired = select(Job.id).where(Job.batch_id == batch.id, Job.status == JobStatus.EXPIRED.value).limit(1)
    if session.scalar(expired) is not None:
        return BatchStatus.EXPIRED
    return BatchStatus.COMPLETED


def _store(session: Session, batch: Batch, name: str, lines: list[str]) -> str:
    content = "".join(line + "\n" for line in lines).encode()
    row = new_file(batch.tenant_id, "batch_output", f"{batch.id}_{name}.jsonl", content)
    session.add(row)
    session.flush()
    return row.id


def _write_lines(session: Session, batch: Batch) -> tuple[list[str], list[str], tuple[int, int, int]]:
    """(output lines, error lines, (total, completed, failed)) in input order. The error lines include the
    lines a partial batch (`allow_partial`) left out at validation, each where it stood in the input."""
    chat = batch.endpoint == "/v1/chat/completions"
    output: list[str] = []
    errors: list[tuple[int, str]] = []
    for job in _lines(session, batch.id):
        line = json.dumps(result_line(job, chat))
        if job["status"] == JobStatus.SUCCEEDED.value:
            output.append(line)
        else:
            errors.append((job["batch_line"], line))
    failed = len(errors) + batch.failed  # before finalization, `failed` holds the lines validation left out
    errors = list(heapq.merge(errors, _invalid_lines(session, batch)))
    return output, [line for _, line in errors], (len(output) + failed, len(output), failed)


def _invalid_lines(session: Session, batch: Batch) -> list[tuple[int, str]]:
    """(line number, error line) of the lines validation left out of a partial batch, in input order."""
    stored = session.get(StoredFile, batch.invalid_file_id) if batch.invalid_file_id else None
    if stored is None:
        return []
    lines = stored.content.decode().splitlines()
    return [(json.loads(line)["error"]["line"], line) for line in lines if line]


def _lines(session: Session, batch_id: str) -> Iterator[dict[str, Any]]:
    """The batch's jobs in input order, as the few fields a result line needs, read in chunks. Of the input
    only its `echo` text (shared/openai_responses.py): prompts and messages stay in the database."""
    columns = (Job.id, Job.kind, Job.custom_id, Job.model, Job.status, Job.output, Job.stats, Job.error)
    columns += (Job.created_at, Job.batch_line, Job.input["echo"].as_string().label("echo"))
    stmt = select(*columns).where(Job.batch_id == batch_id).order_by(Job.batch_line)
    for row in session.execute(stmt.execution_options(yield_per=READ_CHUNK)):
        job = dict(row._mapping)
        yield job | {"input": {"echo": job.pop("echo")}}


def result_line(job: dict[str, Any], chat: bool) -> dict[str, Any]:
    """One line of the output or error file, as OpenAI writes them: `response` holds the status code and
    the body the OpenAI route would have answered; a line that never ran has `error` instead."""
    line: dict[str, Any] = {"id": "batch_req_" + job["id"].split("_", 1)[-1], "custom_id": job["custom_id"]}
    status = job["status"]
    if status == JobStatus.SUCCEEDED.value:
        infill = job["kind"] == "infill"  # a completion with a suffix: its answer is the fill
        shape = Shape(chat, job["id"], job["model"], int(job["created_at"].timestamp()), infill=infill)
        body = completion_body(shape, job)
        return {**line, "response": {"status_code": 200, "request_id": job["id"], "body": body}, "error": None}
    if status == JobStatus.CANCELED.value:
        message = "the batch was cancelled before this request ran"
        return {**line, "response": None, "error": {"code": "batch_cancelled", "message": message}}
    if status == JobStatus.EXPIRED.value:
        message = "this request could not be executed before the completion window expired"
        return {**line, "response": None, "error": {"code": "batch_expired", "message": message}}
    type_, message = job_error(job)
    body = {"error": {"message": message, "type": type_, "param": None, "code": type_}}
    response = {"status_code": error_status(job), "request_id": job["id"], "body": body}
    return {**line, "response": response, "error": None}
