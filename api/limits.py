"""Per-tenant submission limits: a rate (submissions in any sliding minute, counted in Redis) and a cap on
jobs queued or running at once (counted in the database). Past either, RateLimited (429 with Retry-After)
before anything is recorded.

The cap is exact under concurrent submissions: the count and the caller's insert run under a per-tenant
lock held until the session commits or rolls back (a PostgreSQL advisory lock; on SQLite, the database's
write lock taken before counting). The rate fails open: when Redis does not answer, jobs are still
accepted (the outbox holds them), because refusing work is worse than a burst.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid

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
    """Raise RateLimited if this tenant may not submit now (both checks below)."""
    check_active(session, tenant_id)
    check_rate(tenant_id)


def check_active(session: Session, tenant_id: str) -> None:
    """Raise RateLimited past the tenant's cap on jobs queued or running; holds the tenant's lock until the
    transaction ends (lock_tenant), so call it just before the insert."""
    config = settings()
    if config.max_active_jobs > 0:
        lock_tenant(session, tenant_id)
        # A batch's lines are not counted: they wait in SQL and are released a few at a time (api/batches.py).
        interactive = (Job.tenant_id == tenant_id, Job.status.in_(ACTIVE), Job.batch_id.is_(None))
        active = session.scalar(select(func.count()).where(*interactive))
        if active is not None and active >= config.max_active_jobs:
            raise RateLimited(
                f"{active} jobs are queued or running for this tenant, the most allowed at once "
                f"(CANVAS_MAX_ACTIVE_JOBS={config.max_active_jobs}); retry when some finish",
                ACTIVE_RETRY_SECONDS,
            )


def check_rate(tenant_id: str) -> None:
    """Raise RateLimited past the tenant's submissions per minute; a submission that passes is counted.
    Costly submissions (a fine-tune reads and tokenizes its dataset) call it before that work, so the
    work counts against the rate even when it ends in a 422."""
    config = settings()
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


# A sliding-window log: the tenant's accepted submissions of the last WINDOW seconds, by Redis's clock (one
# clock for every API process). A refused submission is not logged, so retrying does not push the wait back.
RATE_SCRIPT = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(math.max(tonumber(oldest[2]) + window - now, 0.001))
"""
WINDOW_SECONDS = 60


def _check_rate(tenant_id: str, limit: int, window: float = WINDOW_SECONDS) -> None:
    """At most `limit` accepted submissions in any `window` seconds; Retry-After: when the oldest leaves."""
    try:
        wait = events_client().eval(RATE_SCRIPT, 1, f"canvas:rate:{tenant_id}", window, limit, uuid.uuid4().hex)
    except redis.RedisError as exc:
        log.warning("rate limit not checked (Redis: %s); accepting", exc)
        return
    if float(wait) >= 0:  # -1: accepted; else seconds until the oldest submission leaves the window
        raise RateLimited(
            f"more than {limit} submissions in a minute for this tenant (CANVAS_RATE_LIMIT_PER_MINUTE)",
            max(1, math.ceil(float(wait))),
        )
