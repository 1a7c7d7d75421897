"""One lifecycle for every job kind: claim the row, watch the lease, execute the kind, record the outcome.

`run_job` is the only place a job moves from `running` to an end: a typed error from the catalog
(shared/job_errors.py), an attempt-guarded finish (a late or duplicate writer changes nothing), the status
event and, through the transition, the webhooks. What a kind does lives in its executor
(worker/job_kinds/); this module knows none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.db import session_scope
from shared.events import publish_event
from shared.job_errors import JobError, JobErrorCode
from shared.jobs import claim, get_job, transition
from shared.models import utcnow
from shared.settings import Settings
from shared.states import FinishReason, JobStatus
from worker.job_errors import job_error_from
from worker.job_watch import JobWatch

if TYPE_CHECKING:
    from worker.events import EventPublisher
    from worker.host import ModelHost

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    """What a worker process lends its jobs: settings, its name, and (for serving workers) the models it
    hosts and the publisher of live events; a training worker has a plain Redis client instead."""

    settings: Settings
    name: str
    host: ModelHost | None = None
    events: EventPublisher | None = None
    redis: Any = None

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
    settings = runtime.settings
    job = _claim(settings, job_id, runtime.name)
    if job is None:
        log.info("job %s is not queued (a duplicate or canceled delivery, or past its deadline): skipped", job_id)
        return "skipped"
    runtime.publish(job.id, "status", {"status": JobStatus.RUNNING.value, "attempt": job.attempt})
    watch = JobWatch(settings, job.id, job.attempt)
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
        )


def _record_stop(runtime: WorkerRuntime, job: ClaimedJob, watch: JobWatch, output: dict[str, Any] | None) -> str:
    """Record why a job stopped early: lease lost (nothing to write: another attempt owns it), timeout, or
    cancel."""
    if watch.lease_lost.is_set():
        return "lease lost"
    if watch.timed_out and not watch.cancel_requested.is_set():
        message = f"the job ran longer than {runtime.settings.max_job_seconds} s"
        finish(runtime, job, JobStatus.FAILED, error=JobError(JobErrorCode.TIMEOUT, message).as_dict())
        return "timed out"
    return finish(runtime, job, JobStatus.CANCELED, output=output)


def finish(runtime: WorkerRuntime, job: ClaimedJob, to: JobStatus, **values: Any) -> str:
    """Write the outcome if this attempt still owns the job, and publish it. Returns the status or 'lost'."""
    values = {k: v for k, v in values.items() if v is not None}
    with session_scope(runtime.settings.database_url) as session:
        done = transition(
            session, job.id, to, attempt=job.attempt, finished_at=utcnow(), lease_expires_at=None, **values
        )
    if not done:
        return "lost"
    runtime.publish(job.id, "status", {"status": to.value, **({"error": values["error"]} if "error" in values else {})})
    return to.value


def run_stats(job: ClaimedJob) -> dict[str, Any]:
    """The timing every kind's statistics start with."""
    finished = utcnow()
    return {
        "queue_ms": round((job.started_at - job.queued_at).total_seconds() * 1000, 1),
        "run_ms": round((finished - job.started_at).total_seconds() * 1000, 1),
        "attempt": job.attempt,
    }
