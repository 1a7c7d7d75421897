"""Releasing batch jobs to the queue behind interactive ones: the lower-priority lane of the Batch API.

A batch's jobs wait in SQL without an outbox record. Each sweep gives, per model, the oldest waiting ones
an outbox record and publishes them, until `batch_max_in_flight` batch jobs of that model are released
and not yet ended (queued in the broker, or running). Interactive jobs are published at once, so one that
arrives while a 50,000-line batch runs queues behind at most that many batch jobs, never behind the batch.

This is the minimal rule (batch last, a bounded window); a fair publisher that keeps every job in SQL can
absorb it by treating `jobs.batch_id IS NOT NULL` as its lowest lane. Knows the database and the outbox.
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from shared.jobs import task_route
from shared.models import Job, OutboxMessage
from shared.queue import publish_pending
from shared.states import JobStatus

_RELEASED = exists(select(OutboxMessage.id).where(OutboxMessage.job_id == Job.id))
_WAITING = and_(Job.batch_id.is_not(None), Job.status == JobStatus.QUEUED.value, ~_RELEASED)


def in_flight(session: Session) -> dict[str, int]:
    """Per model: batch jobs released and not ended (running, canceling, or queued with an outbox record)."""
    running = Job.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELING.value])
    released_queued = and_(Job.status == JobStatus.QUEUED.value, _RELEASED)
    stmt = (
        select(Job.model, func.count())
        .where(Job.batch_id.is_not(None), or_(running, released_queued))
        .group_by(Job.model)
    )
    return {model: count for model, count in session.execute(stmt).all()}


def release_batch_jobs(session: Session, app: Celery, max_in_flight: int) -> int:
    """Give the oldest waiting batch jobs of each model outbox records up to `max_in_flight` released, and
    publish them (what the broker refuses stays in the outbox for the next sweep). Returns how many were
    released. The caller commits."""
    busy = in_flight(session)
    released: list[int] = []
    for model in session.scalars(select(Job.model).where(_WAITING).distinct()).all():
        room = max_in_flight - busy.get(model, 0)
        if room <= 0:
            continue
        stmt = (
            select(Job)
            .where(_WAITING, Job.model == model)
            .order_by(Job.created_at, Job.batch_id, Job.batch_line)
            .limit(room)
            .with_for_update(skip_locked=True)
        )
        for job in session.scalars(stmt).all():
            task, queue = task_route(session, job)
            message = OutboxMessage(job_id=job.id, task_name=task, queue=queue)
            session.add(message)
            session.flush()
            released.append(message.id)
    if released:
        publish_pending(session, app, ids=released, limit=len(released))
    return len(released)
