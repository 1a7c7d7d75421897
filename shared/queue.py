"""The broker side shared by API and workers: the Celery app factory and outbox publishing.

The API publishes by task name through this module and never imports worker code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery, bootsteps
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import OutboxMessage, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)


def make_celery(settings: Settings, name: str = "canvas") -> Celery:
    """A Celery app configured for long GPU jobs: late acks, prefetch 1, a long visibility timeout."""
    app = Celery(name, broker=settings.redis_url)
    transport = {
        # Longer than the longest job, or Redis redelivers a running job (celery#5935, pretix#2058).
        "visibility_timeout": settings.max_job_seconds + 3600,
        "socket_connect_timeout": settings.publish_timeout_seconds,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # the SQL row is the source of truth
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.publish_timeout_seconds,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def at_worker_start(app: Celery, name: str, start: Callable[[], None]) -> None:
    """Run `start` when a worker of `app` starts, before it takes a task. If it raises, the worker does not
    start: Celery logs the error as unrecoverable and the process exits non-zero.

    A boot step of this app, not a `worker_init`/`worker_ready` signal handler: signals reach every app in
    the process, and `worker_ready` is sent by the command-line worker only, not by an embedded one.
    """
    step = type(name, (bootsteps.StartStopStep,), {"name": f"canvas.{name}", "start": lambda _self, _w: start()})
    app.steps["worker"].add(step)  # worker steps run before the Consumer step, which Celery starts last


def publish(app: Celery, message: OutboxMessage) -> None:
    """Send one outbox message to its queue; raises if the broker cannot be reached."""
    app.send_task(
        message.task_name,
        args=[message.job_id],
        queue=message.queue,
        task_id=f"{message.job_id}.{message.id}",
        retry=False,
    )


def publish_pending(session: Session, app: Celery, ids: list[int] | None = None, limit: int = 100) -> int:
    """Publish unpublished outbox messages (all, or the given ids), oldest first. Returns how many went out.

    Stops at the first broker failure: the rest stay in the outbox for the sweeper.
    """
    stmt = select(OutboxMessage).where(OutboxMessage.published_at.is_(None))
    if ids is not None:
        stmt = stmt.where(OutboxMessage.id.in_(ids))
    stmt = stmt.order_by(OutboxMessage.id).limit(limit).with_for_update(skip_locked=True)
    sent = 0
    for message in session.scalars(stmt):
        message.publish_attempts += 1
        try:
            publish(app, message)
        except Exception as exc:  # kombu raises OperationalError and friends; all mean "not sent"
            message.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("publish of job %s deferred: %s", message.job_id, message.last_error)
            break
        message.published_at = utcnow()
        sent += 1
    session.flush()
    return sent
