"""Per-app and per-request resources: settings, the database session, the Celery producer."""

from __future__ import annotations

import logging

from celery import Celery
from flask import current_app, g
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import session_factory
from shared.events import publish_event
from shared.fairness import release
from shared.models import OutboxMessage
from shared.settings import Settings

log = logging.getLogger(__name__)


def settings() -> Settings:
    return current_app.extensions["canvas.settings"]


def producer() -> Celery:
    return current_app.extensions["canvas.celery"]


def events_client() -> Redis:
    """The Redis client for live job events (a pool shared by the app's threads)."""
    return current_app.extensions["canvas.redis"]


def publish_status(job_id: str, status: str) -> None:
    """Best effort: a status event for live subscribers (the job row is what counts)."""
    publish_event(events_client(), job_id, "status", {"status": status})


def db_session() -> Session:
    """The request's session, opened on first use. Views commit explicitly; teardown rolls back the rest."""
    if "db" not in g:
        g.db = session_factory(settings().database_url)()
    return g.db


def close_db_session(_exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def release_db_session() -> None:
    """End the request's session now (rolling back anything uncommitted) and give its connection back to
    the pool: a request that goes on to wait or stream must not hold one (a later db_session() opens a new
    session). Rows already loaded stay readable (sessions do not expire them on commit)."""
    close_db_session(None)


def publish_after_commit(outbox_id: int) -> None:
    """A release pass of the committed job's queue now (shared/fairness.py): the job goes to the broker at
    once if its tenant and the queue have room. If the broker or the database hiccups, the job stays
    accepted and the sweeper releases it. Runs in a session of its own: a failure here must not roll back
    (and so expire) the request's session, whose committed rows the answer is still made from."""
    session = session_factory(settings().database_url)()
    try:
        queue = session.scalar(select(OutboxMessage.queue).where(OutboxMessage.id == outbox_id))
        release(session, producer(), settings(), queue)
        session.commit()
    except Exception:
        session.rollback()
        log.exception("could not publish outbox message %s now; the sweeper will", outbox_id)
    finally:
        session.close()
