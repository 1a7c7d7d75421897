"""Retention: what the service keeps, and for how long, so no table grows without bound.

`apply_retention` deletes, oldest first and at most `retention_batch_rows` rows per table in one call:
finished jobs with everything that hangs on them (timeline and per-step metrics events, outbox rows,
webhook messages and their attempts, checkpoint rows), finished webhook messages with their attempts,
published outbox rows of finished jobs, and clears idempotency keys past their window. The sweeper calls
`apply_if_due` on every pass; it runs at most once per `retention_interval_seconds` per database.

It never deletes a job that is not finished, a fine-tune whose model is still registered (the registry
names it), or a job with a webhook message still to deliver. Files on disk (checkpoints) are not its
business: the trainer prunes those (worker/training/trainer.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.models import (
    Checkpoint,
    Job,
    JobEvent,
    ModelRecord,
    OutboxMessage,
    WebhookAttempt,
    WebhookMessage,
    utcnow,
)
from shared.settings import Settings
from shared.states import TERMINAL

log = logging.getLogger(__name__)
FINISHED = [s.value for s in TERMINAL]
UNSENT = ("pending", "delivering")  # webhook messages still to deliver
_last_run: dict[str, float] = {}  # database URL -> monotonic time of the last run in this process
_last_run_lock = threading.Lock()


@dataclass
class Purged:
    """Rows deleted (or, for idempotency keys, cleared) by one call."""

    jobs: int = 0
    events: int = 0
    outbox: int = 0
    webhook_messages: int = 0
    webhook_attempts: int = 0
    checkpoints: int = 0
    idempotency_keys: int = 0

    def total(self) -> int:
        return sum(vars(self).values())


def apply_if_due(settings: Settings) -> Purged | None:
    """`apply_retention` if this process has not run it for this database within the interval."""
    now = time.monotonic()
    with _last_run_lock:
        last = _last_run.get(settings.database_url)
        if last is not None and now - last < settings.retention_interval_seconds:
            return None
        _last_run[settings.database_url] = now
    purged = apply_retention(settings)
    if purged.total():
        log.info("retention: %s", purged)
    return purged


def apply_retention(settings: Settings, now: datetime | None = None) -> Purged:
    """One bounded pass of every retention rule (each in its own transaction)."""
    now = now or utcnow()
    limit = settings.retention_batch_rows
    purged = Purged()
    if settings.retention_job_days > 0:
        with session_scope(settings.database_url) as session:
            purge_finished_jobs(session, now - timedelta(days=settings.retention_job_days), limit, purged)
    if settings.retention_webhook_days > 0:
        with session_scope(settings.database_url) as session:
            purge_webhook_messages(session, now - timedelta(days=settings.retention_webhook_days), limit, purged)
    if settings.retention_outbox_hours > 0:
        with session_scope(settings.database_url) as session:
            purged.outbox += purge_outbox(session, now - timedelta(hours=settings.retention_outbox_hours), limit)
    if settings.retention_idempotency_hours > 0:
        with session_scope(settings.database_url) as session:
            cutoff = now - timedelta(hours=settings.retention_idempotency_hours)
            purged.idempotency_keys += clear_idempotency_keys(session, cutoff, limit)
    return purged


def purge_finished_jobs(session: Session, cutoff: datetime, limit: int, purged: Purged) -> None:
    """Delete up to `limit` jobs finished before `cutoff`, with their rows. A job whose rows are more
    than one batch loses `limit` of each per call and goes itself once none is left."""
    registered = select(ModelRecord.fine_tune_job_id).where(ModelRecord.fine_tune_job_id.is_not(None))
    unsent = exists().where(WebhookMessage.job_id == Job.id, WebhookMessage.status.in_(UNSENT))
    ids = list(
        session.scalars(
            select(Job.id)
            .where(Job.status.in_(FINISHED), Job.finished_at < cutoff, Job.id.not_in(registered), ~unsent)
            .order_by(Job.finished_at)
            .limit(limit)
        )
    )
    if not ids:
        return
    messages = select(WebhookMessage.id).where(WebhookMessage.job_id.in_(ids))
    attempts = _delete_some(session, WebhookAttempt, WebhookAttempt.message_id.in_(messages), limit)
    message_count = _delete_some(session, WebhookMessage, WebhookMessage.job_id.in_(ids), limit)
    events = _delete_some(session, JobEvent, JobEvent.job_id.in_(ids), limit)
    outbox = _delete_some(session, OutboxMessage, OutboxMessage.job_id.in_(ids), limit)
    checkpoints = _delete_some(session, Checkpoint, Checkpoint.job_id.in_(ids), limit)
    purged.webhook_attempts += attempts
    purged.webhook_messages += message_count
    purged.events += events
    purged.outbox += outbox
    purged.checkpoints += checkpoints
    if max(attempts, message_count, events, outbox, checkpoints) < limit:  # nothing of theirs is left
        purged.jobs += session.execute(delete(Job).where(Job.id.in_(ids))).rowcount


def purge_webhook_messages(session: Session, cutoff: datetime, limit: int, purged: Purged) -> None:
    """Delete up to `limit` delivered or failed webhook messages created before `cutoff`, attempts first."""
    old = select(WebhookMessage.id).where(
        WebhookMessage.status.in_(("delivered", "failed")), WebhookMessage.created_at < cutoff
    )
    ids = list(session.scalars(old.order_by(WebhookMessage.created_at).limit(limit)))
    if not ids:
        return
    attempts = _delete_some(session, WebhookAttempt, WebhookAttempt.message_id.in_(ids), limit)
    purged.webhook_attempts += attempts
    if attempts < limit:
        purged.webhook_messages += session.execute(delete(WebhookMessage).where(WebhookMessage.id.in_(ids))).rowcount


def purge_outbox(session: Session, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` outbox rows published before `cutoff` whose job has finished (a queued job's
    row stays: a reconcile may publish it again)."""
    finished = exists().where(Job.id == OutboxMessage.job_id, Job.status.in_(FINISHED))
    return _delete_some(session, OutboxMessage, (OutboxMessage.published_at < cutoff) & finished, limit)


def clear_idempotency_keys(session: Session, cutoff: datetime, limit: int) -> int:
    """Forget the idempotency keys of up to `limit` jobs created before `cutoff`."""
    ids = select(Job.id).where(Job.idempotency_key.is_not(None), Job.created_at < cutoff).limit(limit)
    stmt = update(Job).where(Job.id.in_(ids.scalar_subquery())).values(idempotency_key=None, request_hash=None)
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount


def _delete_some(session: Session, table: Any, where: Any, limit: int) -> int:
    """Delete at most `limit` rows of `table` matching `where` (by primary key, lowest first)."""
    ids = select(table.id).where(where).order_by(table.id).limit(limit)
    stmt = delete(table).where(table.id.in_(ids.scalar_subquery()))
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount
