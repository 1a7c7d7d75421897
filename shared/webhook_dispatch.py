"""Dispatching due webhook messages to the webhook queue, in event order per job and destination, and
recovering deliveries whose worker died. Runs in the sweeper."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from shared.contracts import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.models import WebhookMessage, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)
DISPATCH_GRACE_SECONDS = 60  # a dispatched message is not dispatched again for this long


def _blocked(session: Session, message: WebhookMessage) -> bool:
    """Whether an earlier message of the same job and destination is still undelivered (order per job)."""
    if message.job_id is None:
        return False
    same_destination = (
        WebhookMessage.endpoint_id == message.endpoint_id
        if message.endpoint_id
        else and_(WebhookMessage.endpoint_id.is_(None), WebhookMessage.url == message.url)
    )
    stmt = (
        select(WebhookMessage.id)
        .where(
            WebhookMessage.job_id == message.job_id,
            same_destination,
            WebhookMessage.status.in_(("pending", "delivering")),
            WebhookMessage.created_at < message.created_at,
        )
        .limit(1)
    )
    return session.scalar(stmt) is not None


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
    """Send the due messages' ids to the webhook queue. Returns how many went out."""
    now = utcnow()
    stmt = (
        select(WebhookMessage)
        .where(WebhookMessage.status == "pending", WebhookMessage.next_attempt_at <= now)
        .order_by(WebhookMessage.created_at, WebhookMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    sent = 0
    for message in session.scalars(stmt).all():
        if _blocked(session, message):
            continue
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
