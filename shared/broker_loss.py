"""Broker loss: a queued job whose message the broker lost (a Redis flush, a failover or restart without
persistence) is released again, so it does not stay `queued` forever.

A job released more than `release_lost_seconds` ago that is still `queued` (no worker claimed it) and whose
message is neither in its broker queue nor held by a worker (kombu's `unacked` hash) is lost. Its release is
undone (a conditional UPDATE on the release time it had: a claim or another sweeper in between wins) with a
new outbox record, and the fair publisher sends it again in the same sweep. Should the message turn up after
all, the worker's claim makes the second delivery a no-op. The fair publisher keeps the broker queues short,
so reading them whole is cheap.

Knows the jobs table and kombu's Redis layout, not the workers.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.fairness import known_queues
from shared.jobs import task_route
from shared.models import Job, OutboxMessage, utcnow
from shared.settings import Settings
from shared.states import JobStatus

log = logging.getLogger(__name__)


def release_lost(settings: Settings, app: Celery) -> int:
    """Undo the release of every queued job the broker lost; returns how many (the caller's release pass
    sends them again). A broker that cannot be read is left for the next sweep."""
    cutoff = utcnow() - timedelta(seconds=settings.release_lost_seconds)
    with session_scope(settings.database_url) as session:
        stale = stale_releases(session, cutoff)
    if not stale:
        return 0
    try:
        present = jobs_in_broker(app, {queue for _, queue, _ in stale if queue})
    except Exception as exc:  # Redis down: nothing can be told lost now
        log.warning("broker not read for lost jobs: %s", exc)
        return 0
    lost = [(job_id, released_at) for job_id, _, released_at in stale if job_id not in present]
    undone = 0
    with session_scope(settings.database_url) as session:
        for job_id, released_at in lost:
            undone += _unrelease(session, job_id, released_at)
    if undone:
        log.warning("%d queued jobs were lost by the broker; they are released again", undone)
    return undone


def stale_releases(session: Session, cutoff: datetime) -> list[Row]:
    """(id, queue, released_at) of the queued jobs released before `cutoff`, read queue by queue (the range
    of ix_jobs_release, not the whole backlog)."""
    stmt = select(Job.id, Job.queue, Job.released_at).where(
        Job.status == JobStatus.QUEUED.value, Job.released_at < cutoff
    )
    return [row for queue in known_queues(session) for row in session.execute(stmt.where(Job.queue == queue))]


def jobs_in_broker(app: Celery, queues: set[str]) -> set[str]:
    """Ids of the jobs with a message in one of `queues` or delivered to a worker and not yet acknowledged."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        client = channel.client
        messages = [json.loads(raw) for queue in queues for raw in client.lrange(queue, 0, -1)]
        messages += [json.loads(raw)[0] for raw in client.hvals(channel.unacked_key)]
    return {_job_id(message) for message in messages}


def _job_id(message: dict) -> str:
    """The job of a Celery message: its task id is `<job id>.<outbox id>` (shared/queue.py)."""
    task_id = str(message.get("headers", {}).get("id", ""))
    return task_id.rsplit(".", 1)[0]


def _unrelease(session: Session, job_id: str, released_at: object) -> int:
    """Mark the job waiting again, with a new outbox record, if nothing changed it since it was read."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.released_at == released_at)
        .values(released_at=None)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        return 0
    task, queue = task_route(session, session.get(Job, job_id))
    session.add(OutboxMessage(job_id=job_id, task_name=task, queue=queue))
    session.flush()
    return 1
