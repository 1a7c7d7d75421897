"""Fair release of queued jobs to the broker: jobs wait in SQL, and this publisher hands them to their
queue a few at a time, so that no tenant's burst delays another tenant's next job by more than a few jobs.

Per broker queue (one per served model, and `train` for fine-tunes):

- **depth**: at most `release_depth` jobs are released and not yet claimed by a worker, so the broker's
  queue stays short (a worker reserves only as many messages as it has free rows: prefetch 1 per thread);
- **cap**: at most `tenant_in_flight` jobs of one tenant are released and not finished (running included);
- **round-robin**: each free slot goes to the tenant with the fewest jobs in flight among those with a
  releasable job; a tie goes to the tenant whose next job has waited longest. Within a tenant, its own
  `priority` orders its jobs (higher first), then age;
- **lanes**: a `batch` job (a line of an OpenAI-style batch) is released only when no interactive job of
  any tenant can be released for that queue, except that when no batch job of the queue is in flight, one
  is released anyway: the batch lane always keeps one job moving, so it never starves. At most
  `batch_max_in_flight` batch jobs of a queue are in flight.

Release runs at submission (the API, after its commit), when a worker claims or finishes a job (a slot
frees), and on every sweep. Passes are serialized per queue (an advisory lock on PostgreSQL, the write lock
on SQLite), so two publishers never release past the depth. A released job's message goes out through its
outbox record (shared/queue.py); the claim still guards against a duplicate delivery. Once the broker
refuses a release, a process's best-effort passes pause for a sweep period (`BrokerBackoff`).

Knows the jobs table and the broker's publish, not the workers or the API.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from celery import Celery
from sqlalchemy import Integer, String, column, func, select, text, update
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.jobs import task_route
from shared.models import WAITING, Job, OutboxMessage, UTCDateTime, utcnow
from shared.queue import publish
from shared.settings import Settings
from shared.states import JobStatus, Lane

log = logging.getLogger(__name__)
IN_FLIGHT = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.CANCELING.value)
PASS_LIMIT = 500  # releases in one pass at most (with no depth), so one transaction stays short
WAITING_J = f"j.status = '{JobStatus.QUEUED.value}' AND j.released_at IS NULL"  # WAITING, on jobs aliased j
LANES = " UNION ALL ".join(f"SELECT '{lane.value}' AS lane" for lane in Lane)


@dataclass
class QueueState:
    """What one release pass knows about a queue: jobs in flight per tenant and lane, and what waits."""

    unclaimed: int = 0  # released, not yet claimed: what the broker's queue holds
    in_flight: Counter[str] = field(default_factory=Counter)  # per tenant: released and not finished
    batch_in_flight: int = 0
    waiting: Counter[tuple[str, str]] = field(default_factory=Counter)  # (tenant, lane) -> jobs waiting
    oldest: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (tenant, lane) -> oldest waiting


def plan_releases(state: QueueState, depth: int, cap: int, batch_cap: int = 0) -> list[tuple[str, str]]:
    """The (tenant, lane) of each job to release now, in release order, by the rules above (0: no depth,
    no cap, no batch cap)."""
    free = depth - state.unclaimed if depth > 0 else PASS_LIMIT
    plan: list[tuple[str, str]] = []
    in_flight, waiting, batch_in_flight = Counter(state.in_flight), Counter(state.waiting), state.batch_in_flight

    def candidates(lane: str) -> list[tuple[str, str]]:
        return [(t, ln) for (t, ln), n in waiting.items() if ln == lane and n > 0 and (cap <= 0 or in_flight[t] < cap)]

    while free > 0:
        interactive, batch = candidates(Lane.INTERACTIVE.value), candidates(Lane.BATCH.value)
        batch = batch if batch_cap <= 0 or batch_in_flight < batch_cap else []
        pool = batch if batch and (batch_in_flight == 0 or not interactive) else interactive
        if not pool:
            break
        pick = min(pool, key=lambda key: (in_flight[key[0]], state.oldest[key]))
        plan.append(pick)
        waiting[pick] -= 1
        in_flight[pick[0]] += 1
        batch_in_flight += pick[1] == Lane.BATCH.value
        free -= 1
    return plan


class BrokerBackoff:
    """Per broker, in this process: after it refused a release, best-effort passes (`release_soon`: after a
    submission, a claim, a finish) skip it for a sweep period. A refusal is slow: the producer retries the
    connection until `publish_timeout_seconds` (a closed port took 2.1 s at the default of 2), holding the
    queue's lock, so without the pause every submission would wait its turn behind the others' failing
    tries. The sweeper's passes still try; in the sweeper's process, one that gets a job through ends the
    pause (elsewhere it runs out). Jobs not released wait in SQL: nothing is lost. One pause per broker:
    a success on any queue ends it."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def pause(self, broker: str, seconds: float) -> None:
        with self._lock:
            self._until[broker] = max(self._until.get(broker, 0.0), time.monotonic() + seconds)

    def resume(self, broker: str) -> None:
        with self._lock:
            self._until.pop(broker, None)

    def paused(self, broker: str) -> bool:
        return time.monotonic() < self._until.get(broker, 0.0)

    def clear(self) -> None:
        with self._lock:
            self._until.clear()


BROKER_BACKOFF = BrokerBackoff()


def release(session: Session, app: Celery, settings: Settings, queue: str, best_effort: bool = False) -> int:
    """Release what is fair of `queue`'s waiting jobs to the broker. Returns how many went out; stops at the
    first broker failure (the rest wait for the next pass), which pauses best-effort passes (`best_effort`:
    this one returns 0 at once while they are paused) for a sweep period. The caller commits."""
    _lock(session, queue)
    broker = settings.redis_url
    if best_effort and BROKER_BACKOFF.paused(broker):  # also when the pass before ours, which held the lock, failed
        return 0
    state = queue_state(session, queue, settings.release_depth, settings.tenant_in_flight)
    if not state.waiting:
        return 0
    plan = plan_releases(state, settings.release_depth, settings.tenant_in_flight, settings.batch_max_in_flight)
    picked = {key: iter(_next_jobs(session, queue, *key, count)) for key, count in Counter(plan).items()}
    sent = 0
    for key in plan:
        job_id = next(picked[key], None)
        if job_id is None:  # claimed or canceled since the counts were read
            continue
        if not _release_job(session, app, job_id, queue):
            BROKER_BACKOFF.pause(broker, settings.sweep_seconds)
            break
        BROKER_BACKOFF.resume(broker)
        sent += 1
    return sent


# Per tenant with waiting work (a skip scan: one index probe per tenant, not a read of the backlog) and per
# lane: its oldest waiting job, and how many wait, counted up to :enough only.
WAITING_KEYS = text(f"""
WITH RECURSIVE tenants(tenant_id) AS (
    SELECT (SELECT j.tenant_id FROM jobs j WHERE j.queue = :queue AND {WAITING_J}
            ORDER BY j.queue, j.tenant_id, j.lane, j.created_at LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id FROM jobs j WHERE j.queue = :queue AND {WAITING_J} AND j.tenant_id > t.tenant_id
            ORDER BY j.queue, j.tenant_id, j.lane, j.created_at LIMIT 1)
    FROM tenants t WHERE t.tenant_id IS NOT NULL
)
SELECT t.tenant_id, lanes.lane,
    (SELECT min(j.created_at) FROM jobs j
     WHERE j.queue = :queue AND {WAITING_J} AND j.tenant_id = t.tenant_id AND j.lane = lanes.lane) AS oldest,
    (SELECT count(*) FROM (SELECT 1 FROM jobs j
     WHERE j.queue = :queue AND {WAITING_J} AND j.tenant_id = t.tenant_id AND j.lane = lanes.lane
     LIMIT :enough) AS first) AS waiting
FROM tenants t CROSS JOIN ({LANES}) AS lanes
WHERE t.tenant_id IS NOT NULL
""").columns(
    column("tenant_id", String), column("lane", String), column("oldest", UTCDateTime), column("waiting", Integer)
)


def queue_state(session: Session, queue: str, depth: int = 0, cap: int = 0) -> QueueState:
    """The counts `plan_releases` works on with this `depth` and `cap`, read from the jobs table: the released
    jobs in flight (ix_jobs_release; at most the depth plus what runs), and per tenant and lane with waiting
    work its oldest job and how many wait, counted only up to what one plan can release of them (the free
    slots of the depth, and the cap), so the read does not grow with the backlog (ix_jobs_waiting_oldest)."""
    state = QueueState()
    released = (
        select(Job.tenant_id, Job.lane, Job.status, func.count())
        .where(Job.queue == queue, Job.status.in_(IN_FLIGHT), Job.released_at.is_not(None))
        .group_by(Job.tenant_id, Job.lane, Job.status)
    )
    for tenant, lane, status, count in session.execute(released):
        state.in_flight[tenant] += count
        state.batch_in_flight += count if lane == Lane.BATCH.value else 0
        state.unclaimed += count if status == JobStatus.QUEUED.value else 0
    free = depth - state.unclaimed if depth > 0 else PASS_LIMIT
    if free <= 0:
        return state  # no slot: nothing to release, so no need to read what waits
    enough = min(free, cap) if cap > 0 else free
    for tenant, lane, oldest, count in session.execute(WAITING_KEYS, {"queue": queue, "enough": enough}):
        if count:
            state.waiting[(tenant, lane)] = count
            state.oldest[(tenant, lane)] = oldest
    return state


def _next_jobs(session: Session, queue: str, tenant: str, lane: str, count: int) -> list[str]:
    """The ids of a tenant's next `count` waiting jobs in a lane: highest priority first, then oldest (read
    in the order of ix_jobs_waiting_next, so only `count` entries)."""
    stmt = (
        select(Job.id)
        .where(Job.queue == queue, text(WAITING), Job.tenant_id == tenant, Job.lane == lane)
        .order_by(Job.priority.desc(), Job.created_at, Job.batch_line, Job.id)
        .limit(count)
    )
    return list(session.scalars(stmt))


def _release_job(session: Session, app: Celery, job_id: str, queue: str) -> bool:
    """Publish the job's waiting outbox message (one is added if it has none) and mark the job released.
    Returns False when the broker refused it (recorded on the message)."""
    stmt = select(OutboxMessage).where(OutboxMessage.job_id == job_id, OutboxMessage.published_at.is_(None))
    message = session.scalars(stmt.order_by(OutboxMessage.id.desc()).limit(1)).first()
    if message is None:
        message = _new_delivery(session, job_id, queue)
    message.publish_attempts += 1
    try:
        publish(app, message)
    except Exception as exc:  # kombu raises OperationalError and friends; all mean "not sent"
        message.last_error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("release of job %s deferred: %s", job_id, message.last_error)
        session.flush()
        return False
    now = utcnow()
    message.published_at = now
    session.execute(
        update(Job).where(Job.id == job_id).values(released_at=now).execution_options(synchronize_session=False)
    )
    session.flush()
    return True


def _new_delivery(session: Session, job_id: str, queue: str) -> OutboxMessage:
    """An outbox message that delivers the job again, routed as its last one was."""
    task, _queue = task_route(session, session.get(Job, job_id))
    message = OutboxMessage(job_id=job_id, task_name=task, queue=queue)
    session.add(message)
    session.flush()
    return message


def _lock(session: Session, queue: str) -> None:
    """Serialize release passes of one queue until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(zlib.crc32(queue.encode()))))
    else:  # SQLite: a write first takes the database's write lock (and a fresh snapshot) for the pass
        session.execute(text("UPDATE jobs SET priority = priority WHERE 0 = 1"))


def waiting_by_queue(session: Session) -> Counter[str]:
    """Jobs waiting in SQL for release, per queue. A queue's backlog is these plus its broker list (released,
    not yet claimed): what metrics and autoscaling must read, since the broker list stays at most the depth."""
    stmt = (
        select(Job.queue, func.count())
        .where(Job.status == JobStatus.QUEUED.value, Job.released_at.is_(None))
        .group_by(Job.queue)
    )
    return Counter({queue: count for queue, count in session.execute(stmt) if queue is not None})


def known_queues(session: Session) -> list[str]:
    """Every queue a job was routed to, one index probe each (ix_jobs_release leads with the queue): a
    DISTINCT over the jobs would read every row."""
    queues: list[str] = []
    after = select(Job.queue).where(Job.queue.is_not(None))
    while (queue := session.scalar(after.order_by(Job.queue).limit(1))) is not None:
        queues.append(queue)
        after = select(Job.queue).where(Job.queue > queue)
    return queues


def waiting_queues(session: Session) -> list[str]:
    """Queues with jobs waiting for release (per queue an index probe, however many wait)."""
    waiting = select(Job.id).where(Job.status == JobStatus.QUEUED.value, Job.released_at.is_(None))
    return [q for q in known_queues(session) if session.scalar(waiting.where(Job.queue == q).limit(1)) is not None]


def release_all(settings: Settings, app: Celery) -> int:
    """A release pass over every queue with waiting jobs, each in its own transaction (the sweeper's)."""
    with session_scope(settings.database_url) as session:
        queues = waiting_queues(session)
    sent = 0
    for queue in queues:
        with session_scope(settings.database_url) as session:
            sent += release(session, app, settings, queue)
    return sent


def release_soon(settings: Settings, app: Celery, queue: str | None) -> int:
    """Best effort: one release pass of `queue` now (a submission, a claim or a finish freed or needs a
    slot); none while the broker's release is paused (`BrokerBackoff`). A failure is logged, never raised:
    the sweeper's pass releases what this one missed."""
    if queue is None or BROKER_BACKOFF.paused(settings.redis_url):
        return 0
    try:
        with session_scope(settings.database_url) as session:
            return release(session, app, settings, queue, best_effort=True)
    except Exception:
        log.exception("release pass of queue %s failed; the sweeper will release", queue)
        return 0
