"""Per-app and per-request resources: settings, the database session, the Celery producer."""

from __future__ import annotations

from celery import Celery
from flask import current_app, g
from redis import Redis
from sqlalchemy.orm import Session

from shared.db import session_factory
from shared.events import publish_event
from shared.settings import Settings


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
