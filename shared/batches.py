"""Batches (OpenAI's Batch API) in SQL: the batch's lines inserted as jobs in bounded chunks, its request
counts, its public view, and ending its queued lines at once (cancel, expiry).

A batch's jobs are ordinary `generate` jobs with `batch_id`, `custom_id` and `batch_line` set; they get
no outbox record here (they wait in the batch lane of shared/fairness.py) and no job.* webhooks.
Knows the database, not HTTP, tokenizers or the broker.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest
from shared.job_kinds import kind_spec
from shared.jobs import served_by, transition
from shared.models import Batch, Job, JobEvent, utcnow
from shared.states import FinishReason, JobStatus, Lane

INSERT_CHUNK = 500  # rows per INSERT: bounded statements and memory however long the file
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MAX_WINDOW = timedelta(hours=24)
_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([smh])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours"}


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


OPEN = (BatchStatus.IN_PROGRESS.value, BatchStatus.CANCELLING.value)  # lines may still run
ENDED = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)
ACTIVE_JOB = [JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.CANCELING.value]


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex


def completion_window(text: str) -> timedelta:
    """`24h` as OpenAI has it; shorter windows (`90m`, `30s`) are Canvas's extension. InvalidRequest else."""
    match = _WINDOW.match(text)
    window = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match else None
    if window is None or window > MAX_WINDOW:
        raise InvalidRequest(
            "completion_window must be '24h' (or a shorter '<n>h', '<n>m' or '<n>s')", "completion_window"
        )
    return window


def insert_lines(session: Session, rows: Sequence[dict[str, Any]], created_at: datetime) -> None:
    """Insert a batch's jobs (`Job` column values, one dict per line) and their `queued` events, in chunks
    of INSERT_CHUNK rows. They wait in the fair publisher's batch lane (shared/fairness.py), which makes
    their outbox records as it releases them. The caller commits."""
    queues = {(row["kind"], row["model"]): "" for row in rows}
    for kind, model in queues:
        queues[(kind, model)] = kind_spec(kind).queue(served_by(session, model))
    batch_lane = {"status": JobStatus.QUEUED.value, "created_at": created_at, "lane": Lane.BATCH.value}
    for chunk in _chunks(rows, INSERT_CHUNK):
        session.execute(
            insert(Job), [{**row, **batch_lane, "queue": queues[(row["kind"], row["model"])]} for row in chunk]
        )
        events = [
            {"job_id": row["id"], "type": "status", "status": JobStatus.QUEUED.value, "created_at": created_at}
            for row in chunk
        ]
        session.execute(insert(JobEvent), events)


def _chunks(rows: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def request_counts(session: Session, batch: Batch) -> dict[str, int]:
    """{total, completed, failed}: counted from the jobs while the batch runs, as recorded once it ended.
    `failed` counts every line that ended without an answer (failed, canceled or expired)."""
    return counts_of(session, [batch])[batch.id]


def counts_of(session: Session, batches: Sequence[Batch]) -> dict[str, dict[str, int]]:
    """`request_counts` of several batches, with one query for those still open."""
    counts = {b.id: {"total": b.total, "completed": b.completed, "failed": b.failed} for b in batches}
    open_ids = [b.id for b in batches if b.status in OPEN]
    if not open_ids:
        return counts
    stmt = (
        select(Job.batch_id, Job.status, func.count())
        .where(Job.batch_id.in_(open_ids))
        .group_by(Job.batch_id, Job.status)
    )
    for batch_id, status, n in session.execute(stmt).all():
        if status == JobStatus.SUCCEEDED.value:
            counts[batch_id]["completed"] += n
        elif status not in ACTIVE_JOB:
            counts[batch_id]["failed"] += n
    return counts


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_view(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    """OpenAI's Batch object (times in Unix seconds)."""
    errors = {"object": "list", "data": batch.errors} if batch.errors else None
    times = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at")
    times += ("expired_at", "cancelling_at", "cancelled_at")
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        **{name: _unix(getattr(batch, name)) for name in times},
        "request_counts": counts,
        "metadata": batch.batch_metadata,
    }


def end_queued_lines(session: Session, batch_id: str, to: JobStatus, error: dict[str, Any] | None) -> int:
    """Move every queued job of the batch to `to` (canceled or expired) in bulk UPDATEs of INSERT_CHUNK rows,
    each with its timeline event. A job that started meanwhile is left to its worker. Returns how many."""
    assert to in (JobStatus.CANCELED, JobStatus.EXPIRED)
    output = (
        {"text": "", "token_ids": [], "finish_reason": FinishReason.CANCELED.value}
        if to is JobStatus.CANCELED
        else None
    )
    ended = 0
    while True:
        now = utcnow()
        ids = list(
            session.scalars(
                select(Job.id).where(Job.batch_id == batch_id, Job.status == JobStatus.QUEUED.value).limit(INSERT_CHUNK)
            )
        )
        if not ids:
            return ended
        stmt = (
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.QUEUED.value)
            .values(status=to.value, finished_at=now, output=output, error=error)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        changed = list(session.scalars(stmt))
        if changed:
            events = [{"job_id": i, "type": "status", "status": to.value, "created_at": now} for i in changed]
            session.execute(insert(JobEvent), events)
        ended += len(changed)


def cancel_batch(session: Session, batch: Batch) -> None:
    """in_progress -> cancelling: its queued lines are canceled at once, its running ones marked `canceling`
    (their workers stop them within a step); the finalizer ends the batch `cancelled` once none runs.
    Cancelling a batch that is already cancelling changes nothing. The caller commits."""
    now = utcnow()
    stmt = (
        update(Batch)
        .where(Batch.id == batch.id, Batch.status == BatchStatus.IN_PROGRESS.value)
        .values(status=BatchStatus.CANCELLING.value, cancelling_at=now)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        return
    end_queued_lines(session, batch.id, JobStatus.CANCELED, None)
    running = select(Job.id).where(Job.batch_id == batch.id, Job.status == JobStatus.RUNNING.value)
    for job_id in session.scalars(running).all():
        transition(session, job_id, JobStatus.CANCELING)
