"""Dispatching due webhook messages to the webhook queue, in event order per job and destination, and
recovering deliveries whose worker died. Runs in the sweeper."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, aliased

from shared.contracts import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.models import WebhookMessage, utcnow
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


def recover_stalled(session: Session) -> int:
    """Deliveries whose lease expired (the webhook worker died mid-delivery) become pending again."""
    now = utcnow()
    stmt = (
        update(WebhookMessage)
        .where(WebhookMessage.status == "delivering", WebhookMessage.lease_expires_at < now)
        .values(status="pending", next_attempt_at=now, lease_expires_at=None)
    )
    return session.execute(stmt).rowcount  # type: ignore[attr-defined]


def dispatch_due(session: Session, app: Celery, limit: int = 200) -> int:
    """Send the due messages' ids to the webhook queue, oldest first. Only the first undelivered message
    of each (job, destination) is selected, before the limit: messages waiting behind one (a failing
    receiver's backlog) never take the places of other tenants' due ones. Returns how many went out."""
    now = utcnow()
    stmt = (
        select(WebhookMessage)
        .where(WebhookMessage.status == "pending", WebhookMessage.next_attempt_at <= now, _first_undelivered())
        .order_by(WebhookMessage.created_at, WebhookMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    sent = 0
    for message in session.scalars(stmt).all():
        try:
            app.send_task(WEBHOOK_TASK, args=[message.id], queue=WEBHOOK_QUEUE, retry=False)
        except Exception as exc:  # the broker is down: the message stays due, the next sweep retries
            log.warning("webhook dispatch deferred: %s", exc)
            break
        message.next_attempt_at = now + timedelta(seconds=DISPATCH_GRACE_SECONDS)
        sent += 1
    session.flush()
    return sent


def sweep_webhooks(settings: Settings, app: Celery) -> tuple[int, int]:
    from shared.db import session_scope

    with session_scope(settings.database_url) as session:
        recovered = recover_stalled(session)
    with session_scope(settings.database_url) as session:
        return recovered, dispatch_due(session, app)
