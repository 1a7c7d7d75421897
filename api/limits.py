"""Per-tenant submission limits: a rate (submissions per minute, counted in Redis) and a cap on jobs queued
or running at once (counted in the database). Past either, RateLimited (429 with Retry-After) before
anything is recorded. The cap is exact under concurrent submissions: the count and the caller's insert run
under a per-tenant lock held until the session commits or rolls back (a PostgreSQL advisory lock; on
SQLite, the database's write lock taken before counting). The rate fails open: when Redis does not answer, jobs are still accepted (the outbox
holds them), because refusing work is worse than a burst."""

from __future__ import annotations

import hashlib
import logging
import time

import redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from api.state import events_client, settings
from shared.errors import RateLimited
from shared.models import Job
from shared.states import TERMINAL, JobStatus

log = logging.getLogger(__name__)
ACTIVE = [s.value for s in JobStatus if s not in TERMINAL]  # queued, running, canceling
ACTIVE_RETRY_SECONDS = 5


def check_submission(session: Session, tenant_id: str) -> None:
    """Raise RateLimited if this tenant may not submit now."""
    config = settings()
    if config.max_active_jobs > 0:
        lock_tenant(session, tenant_id)
        active = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE)))
        if active is not None and active >= config.max_active_jobs:
            raise RateLimited(
                f"{active} jobs are queued or running for this tenant, the most allowed at once "
                f"(CANVAS_MAX_ACTIVE_JOBS={config.max_active_jobs}); retry when some finish",
                ACTIVE_RETRY_SECONDS,
            )
    if config.rate_limit_per_minute > 0:
        _check_rate(tenant_id, config.rate_limit_per_minute)


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialize this tenant's submissions until the session's transaction ends, so a count and the insert
    that follows it cannot interleave with another request's."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"canvas:submit:{tenant_id}".encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif dialect == "sqlite":
        connection = session.connection().connection.dbapi_connection
        if connection is not None and not connection.in_transaction:  # in one: it has written, so it holds the lock
            connection.execute("BEGIN IMMEDIATE")  # waits (busy_timeout) for other writers, then excludes them


def _check_rate(tenant_id: str, limit: int) -> None:
    """A fixed one-minute window per tenant: INCR, expiring with the window."""
    now = time.time()
    window = int(now // 60)
    key = f"canvas:rate:{tenant_id}:{window}"
    try:
        pipe = events_client().pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("rate limit not checked (Redis: %s); accepting", exc)
        return
    if count > limit:
        raise RateLimited(
            f"more than {limit} submissions this minute for this tenant (CANVAS_RATE_LIMIT_PER_MINUTE)",
            int((window + 1) * 60 - now) + 1,
        )
