"""Dispatching due webhook messages to the webhook queue, in event order per job and destination, and
recovering deliveries whose worker died. Runs in the sweeper."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, case, or_, select, update
from sqlalchemy.orm import Session, aliased

from shared.contracts import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.db import session_scope
from shared.models import WebhookAttempt, WebhookMessage, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)
DISPATCH_GRACE_SECONDS = 60  # a dispatched message is not dispatched again for this long


def _first_undelivered() -> ColumnElement[bool]:
    """True for a message with no earlier undelivered message of the same job and destination: the only
    one of its (job, destination) that may go out now (order per job). Messages without a job are free."""
    earlier = aliased(WebhookMessage)
    same_destination = or_(
        earlier.endpoint_id == WebhookMessage.endpoint_id,
        and_(earlier.endpoint_id.is_(None), WebhookMessage.endpoint_id.is_(None), earlier.url == WebhookMessage.url),
    )
    blocking = select(earlier.id).where(
        earlier.job_id == WebhookMessage.job_id,
        same_destination,
        earlier.status.in_(("pending", "delivering")),
        earlier.created_at < WebhookMessage.created_at,
    )
    return or_(WebhookMessage.job_id.is_(None), ~blocking.exists())


STALLED = (
    "the delivery ended without a result within its lease (its worker died, or its task failed before or"
    " while posting: a database or sealing-key error, say); recovered by the sweeper"
)


def recover_stalled(session: Session, schedule: Sequence[float]) -> int:
    """Deliveries whose lease expired (the webhook worker died mid-delivery, or its task raised before it
    could record a result): each claim was an attempt (`attempts` counts claims), so it is logged as one,
    and the message is pending again, or `failed` once its attempts exceed the retry schedule, as after any
    other failed attempt. Returns how many were recovered."""
    now = utcnow()
    exhausted = WebhookMessage.attempts > len(schedule)
    stmt = (
        update(WebhookMessage)
        .where(WebhookMessage.status == "delivering", WebhookMessage.lease_expires_at < now)
        .values(
            status=case((exhausted, "failed"), else_="pending"),
            next_attempt_at=case((exhausted, WebhookMessage.next_attempt_at), else_=now),
            lease_expires_at=None,
        )
        .returning(WebhookMessage.id, WebhookMessage.attempts, WebhookMessage.status)
        .execution_options(synchronize_session=False)
    )
    recovered = session.execute(stmt).all()
    for message_id, attempts, status in recovered:
        error = STALLED + ("; no attempt left: failed" if status == "failed" else "")
        session.add(WebhookAttempt(message_id=message_id, attempt=attempts, error=error, created_at=now))
        log.warning("webhook message %s: attempt %d stalled; now %s", message_id, attempts, status)
    session.flush()
    return len(recovered)


def dispatch_due(session: Session, app: Celery, limit: int = 200) -> int:
    """Send the due messages' ids to the webhook queue, oldest first. Only the first undelivered message
    of each (job, destination) is selected, before the limit: messages waiting behind one (a failing
    receiver's backlog) never take the places of other tenants' due ones. Returns how many went out."""
    now = utcnow()
    stmt = (
        select(WebhookMessage.id)  # ids only: a message's payload is the webhook worker's to read
        .where(WebhookMessage.status == "pending", WebhookMessage.next_attempt_at <= now, _first_undelivered())
        .order_by(WebhookMessage.created_at, WebhookMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    grace_end = now + timedelta(seconds=DISPATCH_GRACE_SECONDS)
    sent = 0
    for message_id in session.scalars(stmt).all():
        if not _move_due(session, message_id, now, grace_end):
            continue  # another sweeper took it between our SELECT and this UPDATE (SQLite has no row locks)
        try:
            app.send_task(WEBHOOK_TASK, args=[message_id], queue=WEBHOOK_QUEUE, retry=False)
        except Exception as exc:  # the broker is down: the message is due again, the next sweep retries
            log.warning("webhook dispatch deferred: %s", exc)
            _move_due(session, message_id, grace_end, now)
            break
        sent += 1
    session.flush()
    return sent


def _move_due(session: Session, message_id: str, due_by: datetime, to: datetime) -> bool:
    """Set `next_attempt_at` of a message still pending and due by `due_by` to `to`; whether it was.
    Conditional, so of sweepers that selected one message at once (woken together; SQLite ignores
    FOR UPDATE) only the first to take it (moves it past the dispatch grace) sends it."""
    stmt = (
        update(WebhookMessage)
        .where(
            WebhookMessage.id == message_id,
            WebhookMessage.status == "pending",
            WebhookMessage.next_attempt_at <= due_by,
        )
        .values(next_attempt_at=to)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]


def dispatch_now(settings: Settings, app: Celery) -> int:
    """`dispatch_due` in a transaction of its own: how many went out."""
    with session_scope(settings.database_url) as session:
        return dispatch_due(session, app)


def sweep_webhooks(settings: Settings, app: Celery) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        recovered = recover_stalled(session, settings.webhook_schedule)
    return recovered, dispatch_now(settings, app)
