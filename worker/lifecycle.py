"""One lifecycle for every job kind: claim the row, watch the lease, execute the kind, record the outcome.

`run_job` is the only place a job moves from `running` to an end: a typed error from the catalog
(shared/job_errors.py), an attempt-guarded finish (a late or duplicate writer changes nothing), the status
event and, through the transition, the webhooks. What a kind does lives in its executor
(worker/job_kinds/); this module knows none of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.events import publish_event
from shared.fairness import release_soon
from shared.job_errors import JobError, JobErrorCode
from shared.jobs import claim, get_job, requeue, transition
from shared.logs import bind_job
from shared.metrics import JOB_QUEUE_SECONDS, JOB_RUN_SECONDS
from shared.models import Job, utcnow
from shared.queue import ClaimFailed, producer
from shared.settings import Settings
from shared.states import FinishReason, JobStatus
from worker.job_errors import job_error_from
from worker.job_watch import JobWatch

if TYPE_CHECKING:
    from worker.events import EventPublisher
    from worker.host import ModelHost
    from worker.shutdown import Drain

log = logging.getLogger(__name__)
FINISH_FIRST_DELAY, FINISH_MAX_DELAY = 0.05, 2.0  # seconds between tries of a finish the database refused


@dataclass
class WorkerRuntime:
    """What a worker process lends its jobs: settings, its name, and (for serving workers) the models it
    hosts, the publisher of live events and the drain of its shutdown; a training worker has a plain Redis
    client instead."""

    settings: Settings
    name: str
    host: ModelHost | None = None
    events: EventPublisher | None = None
    redis: Any = None
    drain: Drain | None = None

    def publish(self, job_id: str, event_type: str, data: dict[str, Any]) -> None:
        """A live event for the job's followers (SSE), if this worker has a way to send one."""
        if self.events is not None:
            self.events.publish(job_id, event_type, data)
        elif self.redis is not None:
            try:
                publish_event(self.redis, job_id, event_type, data)
            except Exception:  # live events are best effort; the database has the truth
                log.exception("event %s of job %s not published", event_type, job_id)


@dataclass(frozen=True)
class ClaimedJob:
    """A snapshot of the job row taken at claim time: what an executor may read."""

    id: str
    kind: str
    model: str
    tenant_id: str
    input_ids: list[int]
    params: dict[str, Any]
    plan: dict[str, Any]
    attempt: int
    queued_at: datetime
    started_at: datetime
    queue: str | None = None  # the broker queue it came from: a slot there frees when it is claimed and ends


@dataclass
class Outcome:
    """What an executor made: the output and statistics, or `stopped` when a cancel, a timeout or a lost
    lease cut it short (the lifecycle tells which)."""

    output: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False


class Executor(Protocol):
    """A kind's work. `execute` raises JobError (or any exception, recorded as the catalog maps it);
    `canceled_output` is what a job stopped before it made anything answers (None: no output)."""

    def execute(self, job: ClaimedJob, runtime: WorkerRuntime, watch: JobWatch) -> Outcome: ...

    def canceled_output(self) -> dict[str, Any] | None: ...


def run_job(runtime: WorkerRuntime, job_id: str, executor_for: Callable[[str], Executor]) -> str:
    """Run one delivery of a job with the executor `executor_for(kind)` gives. Returns what happened (for
    logs): a duplicate delivery, or one past its deadline, is 'skipped'."""
    with runtime.drain.job() if runtime.drain is not None else nullcontext():
        try:
            job = _claim(runtime.settings, job_id, runtime.name)
        except (OperationalError, InterfaceError) as exc:  # the database is down: this delivery must come again
            raise ClaimFailed(f"job {job_id} could not be claimed: {exc.orig or exc}") from exc
        # The claim (or a skipped delivery) freed a slot of the queue's release depth: the next job goes out.
        release_soon(runtime.settings, producer(runtime.settings), job.queue if job else _queue_of(runtime, job_id))
        if job is None:
            log.info("job %s is not queued (a duplicate or canceled delivery, or past its deadline): skipped", job_id)
            return "skipped"
        with _in_scope(job):
            return _run_claimed(runtime, job, executor_for)


@contextmanager
def _in_scope(job: ClaimedJob) -> Iterator[None]:
    """The job's fields on every log line of this task, and its time in the queue observed."""
    waited = (job.started_at - job.queued_at).total_seconds()
    if job.attempt == 1:
        JOB_QUEUE_SECONDS.labels(job.kind).observe(waited)
    with bind_job(job_id=job.id, tenant=job.tenant_id, model=job.model, attempt=job.attempt):
        log.info("job %s (%s) started after %.2f s in the queue", job.id, job.kind, waited)
        yield


def _run_claimed(runtime: WorkerRuntime, job: ClaimedJob, executor_for: Callable[[str], Executor]) -> str:
    runtime.publish(job.id, "status", {"status": JobStatus.RUNNING.value, "attempt": job.attempt})
    requeue_event = runtime.drain.requeue if runtime.drain is not None else None
    watch = JobWatch(runtime.settings, job.id, job.attempt, requeue_event)
    watch.start()
    try:
        executor = executor_for(job.kind)
        outcome = executor.execute(job, runtime, watch)
    except Exception as exc:
        error = exc if isinstance(exc, JobError) else job_error_from(exc)
        if error.code == JobErrorCode.INTERNAL_ERROR:
            log.exception("job %s failed", job.id)
        return finish(runtime, job, JobStatus.FAILED, error=error.as_dict())
    finally:
        watch.stop()
    if outcome.stopped:
        return _record_stop(runtime, job, watch, executor.canceled_output())
    if finish(runtime, job, JobStatus.SUCCEEDED, output=outcome.output, stats=outcome.stats) != "lost":
        return "succeeded"
    # Canceled after the last step: keep what was made, but honour the cancel.
    output = dict(outcome.output or {})
    if "finish_reason" in output:
        output["finish_reason"] = FinishReason.CANCELED.value
    return finish(runtime, job, JobStatus.CANCELED, output=output, stats=outcome.stats)


def _claim(settings: Settings, job_id: str, worker: str) -> ClaimedJob | None:
    with session_scope(settings.database_url) as session:
        attempt = claim(session, job_id, worker, settings.lease_seconds)
        if attempt is None:
            return None
        row = get_job(session, job_id)
        return ClaimedJob(
            id=row.id,
            kind=row.kind,
            model=row.model,
            tenant_id=row.tenant_id,
            input_ids=list(row.input_ids),
            params=dict(row.params),
            plan=dict(row.input or {}),
            attempt=attempt,
            queued_at=row.created_at,
            started_at=row.started_at,
            queue=row.queue,
        )


def _queue_of(runtime: WorkerRuntime, job_id: str) -> str | None:
    """The queue of a job this worker did not claim (a duplicate, canceled or expired delivery)."""
    try:
        with session_scope(runtime.settings.database_url) as session:
            return session.scalar(select(Job.queue).where(Job.id == job_id))
    except Exception:  # best effort: the sweeper's pass releases what this one would have
        log.exception("queue of job %s not read", job_id)
        return None


def _record_stop(runtime: WorkerRuntime, job: ClaimedJob, watch: JobWatch, output: dict[str, Any] | None) -> str:
    """Record why a job stopped early: lease lost (nothing to write: another attempt owns it), the worker's
    shutdown (back to the queue, the attempt not spent), timeout, or cancel."""
    if watch.lease_lost.is_set():
        return "lease lost"
    if watch.requeue.is_set() and not watch.cancel_requested.is_set():
        return _give_back(runtime, job, output)
    if watch.timed_out and not watch.cancel_requested.is_set():
        message = f"the job ran longer than {runtime.settings.max_job_seconds} s"
        finish(runtime, job, JobStatus.FAILED, error=JobError(JobErrorCode.TIMEOUT, message).as_dict())
        return "timed out"
    return finish(runtime, job, JobStatus.CANCELED, output=output)


def _give_back(runtime: WorkerRuntime, job: ClaimedJob, canceled_output: dict[str, Any] | None) -> str:
    """Requeue a job this shutting-down worker still runs, without spending its attempt, and release it
    again now if its queue has room. A job canceled meanwhile is recorded as canceled."""
    settings = runtime.settings
    data = {"reason": "worker shutting down", "worker": runtime.name, "attempt": job.attempt}
    with session_scope(settings.database_url) as session:
        done = requeue(session, job.id, job.attempt, data, spend_attempt=False)
    if not done:  # canceled (now `canceling`), or no longer this attempt's
        return finish(runtime, job, JobStatus.CANCELED, output=canceled_output)
    runtime.publish(job.id, "status", {"status": JobStatus.QUEUED.value})
    release_soon(settings, producer(settings), job.queue)  # what this pass misses, the sweeper releases
    log.info("job %s requeued: the worker is shutting down", job.id)
    return "requeued"


def finish(runtime: WorkerRuntime, job: ClaimedJob, to: JobStatus, **values: Any) -> str:
    """Write the outcome if this attempt still owns the job, and publish it. Returns the status or 'lost'."""
    values = {k: v for k, v in values.items() if v is not None}
    finished_at = utcnow()
    if not _write_finish(runtime.settings, job, to, finished_at, values):
        return "lost"
    release_soon(runtime.settings, producer(runtime.settings), job.queue)  # a row and a tenant slot freed
    ran = (finished_at - job.started_at).total_seconds()
    JOB_RUN_SECONDS.labels(job.kind).observe(ran)
    log.info("job %s %s after %.2f s", job.id, to.value, ran)
    runtime.publish(job.id, "status", {"status": to.value, **({"error": values["error"]} if "error" in values else {})})
    return to.value


def _write_finish(settings: Settings, job: ClaimedJob, to: JobStatus, finished_at: datetime, values: dict) -> bool:
    """The attempt-guarded finish. While the database cannot be reached it is retried with backoff for as
    long as the lease lasts (a lease_seconds from now: the last renewal was at most a heartbeat ago), so a
    brief outage does not throw the result away; past that the error is raised, and the reaper requeues
    the job once its lease expires. Returns whether this attempt wrote it (False: not ours any more)."""
    give_up = time.monotonic() + settings.lease_seconds
    delay, tries = FINISH_FIRST_DELAY, 0
    while True:
        tries += 1
        try:
            with session_scope(settings.database_url) as session:
                if transition(
                    session, job.id, to, attempt=job.attempt, finished_at=finished_at, lease_expires_at=None, **values
                ):
                    return True
                # After a retry the earlier try may have committed, its answer lost with the connection.
                return tries > 1 and _already_written(session, job, to, finished_at)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > give_up:
                raise
            log.warning("finish of job %s not written (%s); retrying in %.2f s", job.id, exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, FINISH_MAX_DELAY)


def _already_written(session: Session, job: ClaimedJob, to: JobStatus, finished_at: datetime) -> bool:
    row = session.get(Job, job.id)
    return row is not None and (row.status, row.attempts, row.finished_at) == (to.value, job.attempt, finished_at)


def run_stats(job: ClaimedJob) -> dict[str, Any]:
    """The timing every kind's statistics start with."""
    finished = utcnow()
    return {
        "queue_ms": round((job.started_at - job.queued_at).total_seconds() * 1000, 1),
        "run_ms": round((finished - job.started_at).total_seconds() * 1000, 1),
        "attempt": job.attempt,
    }
