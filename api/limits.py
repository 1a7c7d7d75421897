"""Per-tenant submission limits: a rate (submissions per minute, counted in Redis) and a cap on jobs queued
or running at once (counted in the database). Past either, RateLimited (429 with Retry-After) before
anything is recorded. The rate fails open: when Redis does not answer, jobs are still accepted (the outbox
holds them), because refusing work is worse than a burst."""

from __future__ import annotations

import logging
import time

import redis
from sqlalchemy import func, select
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
        active = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE)))
        if active is not None and active >= config.max_active_jobs:
            raise RateLimited(
                f"{active} jobs are queued or running for this tenant, the most allowed at once "
                f"(CANVAS_MAX_ACTIVE_JOBS={config.max_active_jobs}); retry when some finish",
                ACTIVE_RETRY_SECONDS,
            )
    if config.rate_limit_per_minute > 0:
        _check_rate(tenant_id, config.rate_limit_per_minute)


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
