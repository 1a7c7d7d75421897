"""Job persistence: creation with its outbox record, conditional transitions, the timeline, the view.

Every status change goes through `transition`, a conditional UPDATE: a duplicate delivery or a late
writer changes nothing, and an illegal transition is refused.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.errors import Conflict, IllegalTransition, NotFound
from shared.job_errors import JobError, JobErrorCode
from shared.job_kinds import kind_spec
from shared.metrics import JOBS_FINISHED
from shared.models import Job, JobEvent, ModelRecord, OutboxMessage, utcnow
from shared.states import ALLOWED_FROM, TERMINAL, FinishReason, JobStatus
from shared.views import iso, job_view  # noqa: F401  (job_view re-exported: the API uses it from here)
from shared.webhooks import record_status_event


def new_job_id(kind: str = "generate") -> str:
    """A fresh id for a job of `kind` (its prefix says the kind: `job_`, fine-tunes `ft_`)."""
    return kind_spec(kind).new_id()


def create_job(session: Session, job: Job) -> OutboxMessage:
    """Insert a queued job, its first event and its outbox record; the caller commits, then publishes."""
    job.status = JobStatus.QUEUED.value
    job.created_at = job.created_at or utcnow()
    task, queue = task_route(session, job)
    job.queue = queue  # the fair publisher (shared/fairness.py) releases it from there
    session.add(job)
    session.flush()
    session.add(queued_event(job))
    outbox = OutboxMessage(job_id=job.id, task_name=task, queue=queue)
    session.add(outbox)
    session.flush()
    return outbox


def queued_event(job: Job) -> JobEvent:
    """A new job's first (and, until a worker claims it, only) timeline event."""
    return JobEvent(job_id=job.id, type="status", status=JobStatus.QUEUED.value, created_at=job.created_at)


def task_route(session: Session, job: Job) -> tuple[str, str]:
    """(task name, queue) of a job, as its kind routes it: generation to the queue of the model that holds
    the weights (an adapter, or a full fine-tune, is served by its base model's workers)."""
    spec = kind_spec(job.kind)
    return spec.task, spec.queue(served_by(session, job.model))


def served_by(session: Session, model: str) -> str:
    """The model that holds `model`'s weights: its base for an adapter or a full fine-tune, else itself.
    Metrics label jobs with it, so a tenant's fine-tunes do not each add a label value."""
    record = session.get(ModelRecord, model)
    return record.base_model if record is not None and record.base_model else model


def transition(
    session: Session,
    job_id: str,
    to: JobStatus,
    *,
    attempt: int | None = None,
    event_data: dict[str, Any] | None = None,
    condition: Any = None,
    **values: Any,
) -> bool:
    """Move a job to `to` if its current status allows it (and, if given, it is still on `attempt` and
    matches the SQL `condition`). Returns whether the row changed. Appends a timeline event when it did, and
    counts a job that ended in canvas_jobs_finished_total.
    """
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in ALLOWED_FROM[to]]))
        .values(status=to.value, **values)
        .execution_options(synchronize_session=False)
    )
    if attempt is not None:
        stmt = stmt.where(Job.attempts == attempt)
    if condition is not None:
        stmt = stmt.where(condition)
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.add(JobEvent(job_id=job_id, type="status", status=to.value, data=event_data, created_at=now))
    session.flush()
    record_status_event(session, job_id, to)
    if to in TERMINAL:  # counted where every job ends: in a worker, the API (cancel) or the sweeper
        row = session.get(Job, job_id)
        JOBS_FINISHED.labels(row.kind, served_by(session, row.model), to.value).inc()
    return True


def require_transition(session: Session, job_id: str, to: JobStatus, **values: Any) -> None:
    """`transition`, raising IllegalTransition (with the current status) when refused."""
    if not transition(session, job_id, to, **values):
        current = session.scalar(select(Job.status).where(Job.id == job_id))
        raise IllegalTransition(f"job {job_id} is {current}; it cannot become {to.value}")


def claim(session: Session, job_id: str, worker: str, lease_seconds: float) -> int | None:
    """queued -> running for this worker. Returns the attempt number, or None if not claimable.

    The conditional UPDATE is the lock: of two deliveries of one job, exactly one matches `queued`.
    A job past its deadline that never started becomes `expired` instead (None too); a job requeued after
    a lost worker (or a worker's shutdown) has started, so its deadline no longer applies.
    """
    now = utcnow()
    ok = transition(
        session,
        job_id,
        JobStatus.RUNNING,
        event_data={"worker": worker},
        condition=or_(Job.deadline_at.is_(None), Job.deadline_at > now, Job.started_at.is_not(None)),
        attempts=Job.attempts + 1,
        worker=worker,
        started_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
    )
    if not ok:
        expire_overdue(session, [job_id])
        return None
    return session.scalar(select(Job.attempts).where(Job.id == job_id))


def expire_overdue(session: Session, job_ids: list[str] | None = None) -> int:
    """queued -> expired for the (given) never-started queued jobs whose deadline has passed. Returns how many."""
    now = utcnow()
    never_started = (Job.deadline_at <= now) & Job.started_at.is_(None)
    overdue = select(Job.id, Job.deadline_at).where(Job.status == JobStatus.QUEUED.value, never_started)
    if job_ids is not None:
        overdue = overdue.where(Job.id.in_(job_ids))
    expired = 0
    for job_id, deadline in session.execute(overdue).all():
        message = f"the job was not started by its deadline, {iso(deadline)}"
        error = JobError(JobErrorCode.EXPIRED, message).as_dict()
        expired += transition(session, job_id, JobStatus.EXPIRED, condition=never_started, error=error, finished_at=now)
    return expired


def requeue(
    session: Session,
    job_id: str,
    attempt: int,
    event_data: dict[str, Any],
    *,
    spend_attempt: bool,
    condition: Any = None,
) -> bool:
    """running -> queued if `attempt` still owns the job (and it matches the SQL `condition`), with an outbox
    record that delivers it again once the fair publisher releases it. Without `spend_attempt` (the worker
    gave it back: a shutdown) the attempt does not count against max_attempts. Returns whether the job was
    requeued (not, if it finished or moved on meanwhile)."""
    attempts = attempt if spend_attempt else attempt - 1
    done = transition(
        session,
        job_id,
        JobStatus.QUEUED,
        attempt=attempt,
        event_data=event_data,
        condition=condition,
        attempts=attempts,
        lease_expires_at=None,
        worker=None,
        released_at=None,
    )
    if done:
        task, queue = task_route(session, get_job(session, job_id))
        session.add(OutboxMessage(job_id=job_id, task_name=task, queue=queue))
        session.flush()
    return done


def renew_lease(session: Session, job_id: str, attempt: int, lease_seconds: float) -> bool:
    """Extend a running job's lease; False when the job is no longer ours (reaped, finished)."""
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.attempts == attempt,
            Job.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELING.value]),
        )
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]


def get_job(session: Session, job_id: str, tenant_id: str | None = None) -> Job:
    """The job, or NotFound; with a tenant, another tenant's job is also NotFound."""
    job = session.get(Job, job_id)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise NotFound(f"no job with id {job_id!r}", param="id")
    return job


def timeline(session: Session, job_id: str) -> list[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    return list(session.scalars(stmt))


def request_cancel(session: Session, job: Job) -> bool:
    """Cancel a queued job at once, or mark a running one `canceling` (its worker stops it within a step).
    Tries both transitions in order, since the job may start running between the read and the write.
    Commits; returns whether the job is now `canceled`. Raises Conflict if it had already finished."""
    done = False
    if job.status == JobStatus.QUEUED.value:
        empty = {"text": "", "token_ids": [], "finish_reason": FinishReason.CANCELED.value}
        output = None if job.kind == "fine_tune" else empty
        done = transition(session, job.id, JobStatus.CANCELED, finished_at=utcnow(), output=output, attempt=None)
    canceling = not done and transition(session, job.id, JobStatus.CANCELING)
    session.commit()
    session.refresh(job)
    if not done and not canceling and job.status != JobStatus.CANCELING.value:
        noun = "fine-tune" if job.kind == "fine_tune" else "job"
        raise Conflict(f"{noun} {job.id} is {job.status}; only queued or running ones can be canceled", "id")
    return done
