"""The maintenance loop: publishes outbox messages that missed the broker, reaps expired leases, releases
batch jobs behind interactive ones and finalizes batches whose lines all ended.

It runs as a thread beside the API (or as `canvas sweeper`). Several sweepers may run at once: the
outbox rows are taken with SKIP LOCKED on PostgreSQL, and every job change is a conditional UPDATE.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlalchemy import select

from shared.batch_finalizer import sweep_batches
from shared.batch_release import release_batch_jobs
from shared.db import session_scope
from shared.job_errors import JobError, JobErrorCode
from shared.jobs import expire_overdue, requeue, transition
from shared.models import Job, utcnow
from shared.queue import publish_pending
from shared.retention import apply_if_due
from shared.settings import Settings
from shared.states import JobStatus
from shared.webhook_dispatch import sweep_webhooks

log = logging.getLogger(__name__)


def reap_expired_leases(settings: Settings) -> int:
    """Requeue (or fail, after max_attempts) running jobs whose worker stopped renewing the lease."""
    reaped = 0
    with session_scope(settings.database_url) as session:
        stmt = select(Job).where(
            Job.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELING.value]),
            Job.lease_expires_at < utcnow(),
        )
        for job in session.scalars(stmt).all():
            data = {"reason": "lease expired", "worker": job.worker, "attempt": job.attempts}
            if job.status == JobStatus.CANCELING.value:
                done = transition(
                    session,
                    job.id,
                    JobStatus.CANCELED,
                    attempt=job.attempts,
                    event_data=data,
                    finished_at=utcnow(),
                    lease_expires_at=None,
                )
            elif job.attempts < settings.max_attempts:
                done = requeue(session, job.id, job.attempts, data, spend_attempt=True)
            else:
                error = JobError(JobErrorCode.WORKER_LOST, f"worker lost {job.attempts} times").as_dict()
                done = transition(
                    session,
                    job.id,
                    JobStatus.FAILED,
                    attempt=job.attempts,
                    event_data=data,
                    error=error,
                    finished_at=utcnow(),
                    lease_expires_at=None,
                )
            reaped += int(done)
    return reaped


def sweep_once(settings: Settings, app: Celery) -> tuple[int, int]:
    """One pass: (jobs reaped, outbox and webhook messages sent to the broker)."""
    reaped = reap_expired_leases(settings)
    with session_scope(settings.database_url) as session:
        expire_overdue(session)  # queued jobs past their deadline, even where no worker would claim them
    sweep_batches(settings)  # expires overdue batches' lines, finalizes batches whose lines all ended
    with session_scope(settings.database_url) as session:
        published = publish_pending(session, app)
    with session_scope(settings.database_url) as session:
        published += release_batch_jobs(session, app, settings.batch_max_in_flight)
    _recovered, dispatched = sweep_webhooks(settings, app)
    apply_if_due(settings)  # retention: old finished rows, in bounded batches
    return reaped, published + dispatched


class Sweeper(threading.Thread):
    """Runs `sweep_once` every `settings.sweep_seconds` until `stop()`."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        super().__init__(name="canvas-sweeper", daemon=True)
        self.settings, self.app = settings, app
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.sweep_seconds):
            try:
                reaped, published = sweep_once(self.settings, self.app)
            except Exception:  # a database outage must not kill the loop; it logs and tries again
                log.exception("sweep failed")
                continue
            if reaped or published:
                log.info("sweep: %d reaped, %d published", reaped, published)

    def stop(self) -> None:
        self._stop_event.set()
