"""The maintenance loop: releases waiting jobs to the broker (fairly: shared/fairness.py, batch jobs in
their lower lane), releases again jobs a broker loss dropped, reaps expired leases and finalizes batches
whose lines all ended.

It runs as a thread beside the API (or as `canvas sweeper`). Several sweepers may run at once: release
passes are serialized per queue, and every job change is a conditional UPDATE.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.batch_finalizer import sweep_batches
from shared.broker_loss import release_lost
from shared.db import session_scope
from shared.fairness import release_all
from shared.job_errors import JobError, JobErrorCode
from shared.jobs import expire_overdue, requeue, transition
from shared.models import Job, utcnow
from shared.retention import apply_if_due
from shared.settings import Settings
from shared.states import JobStatus
from shared.webhook_dispatch import dispatch_now, sweep_webhooks
from shared.webhook_wake import WakeSubscriber

log = logging.getLogger(__name__)
WAKE_GAP_SECONDS = 0.1  # at most ten wake dispatches a second, however many messages are written


def reap_expired_leases(settings: Settings) -> int:
    """Requeue (or fail, after max_attempts) running jobs whose worker stopped renewing the lease."""
    with session_scope(settings.database_url) as session:
        return sum(reap(session, settings, job) for job in expired_leases(session))


def expired_leases(session: Session) -> list[Job]:
    """Running (or canceling) jobs whose lease has expired, as this moment sees them."""
    stmt = select(Job).where(
        Job.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELING.value]),
        Job.lease_expires_at < utcnow(),
    )
    return list(session.scalars(stmt).all())


def reap(session: Session, settings: Settings, job: Job) -> bool:
    """End the lease of `job` (a row `expired_leases` gave): requeue it, fail it after max_attempts, or, if it
    was canceling, cancel it. Returns whether it changed. Each UPDATE re-checks that the lease is still
    expired: a worker that renewed it since `expired_leases` read it keeps its job."""
    data = {"reason": "lease expired", "worker": job.worker, "attempt": job.attempts}
    expired = Job.lease_expires_at < utcnow()
    if job.status == JobStatus.CANCELING.value:
        return transition(
            session,
            job.id,
            JobStatus.CANCELED,
            attempt=job.attempts,
            event_data=data,
            condition=expired,
            finished_at=utcnow(),
            lease_expires_at=None,
        )
    if job.attempts < settings.max_attempts:
        return requeue(session, job.id, job.attempts, data, spend_attempt=True, condition=expired)
    error = JobError(JobErrorCode.WORKER_LOST, f"worker lost {job.attempts} times").as_dict()
    return transition(
        session,
        job.id,
        JobStatus.FAILED,
        attempt=job.attempts,
        event_data=data,
        condition=expired,
        error=error,
        finished_at=utcnow(),
        lease_expires_at=None,
    )


def sweep_once(settings: Settings, app: Celery) -> tuple[int, int]:
    """One pass: (jobs reaped, outbox and webhook messages sent to the broker)."""
    reaped = reap_expired_leases(settings)
    # Before the per-job expiry below: an overdue batch's queued lines expire in bulk UPDATEs there.
    sweep_batches(settings)  # expires overdue batches' lines, finalizes batches whose lines all ended
    with session_scope(settings.database_url) as session:
        expire_overdue(session)  # queued jobs past their deadline, even where no worker would claim them
    release_lost(settings, app)  # jobs a broker loss dropped wait for release again, and go out just below
    published = release_all(settings, app)
    _recovered, dispatched = sweep_webhooks(settings, app)
    apply_if_due(settings)  # retention: old finished rows, in bounded batches
    return reaped, published + dispatched


class Sweeper(threading.Thread):
    """Runs `sweep_once` every `settings.sweep_seconds` until `stop()`; between passes, a wake
    (shared/webhook_wake.py: a webhook message became due in some process) runs its webhook dispatch at
    once, so a callback does not wait for the next period."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        super().__init__(name="canvas-sweeper", daemon=True)
        self.settings, self.app = settings, app
        self._stop_event = threading.Event()
        self._woken = threading.Event()
        self._wakes = WakeSubscriber(settings.redis_url, self._woken, self._stop_event)

    def run(self) -> None:
        self._wakes.start()
        next_pass = time.monotonic() + self.settings.sweep_seconds
        while not self._stop_event.is_set():
            woken = self._woken.wait(max(0.0, next_pass - time.monotonic()))
            self._woken.clear()  # before the dispatch: a wake from now on runs another
            if self._stop_event.is_set():
                break
            if woken and time.monotonic() < next_pass:
                self._dispatch_webhooks()
                self._stop_event.wait(WAKE_GAP_SECONDS)  # wakes that arrive meanwhile make one more dispatch
                continue
            next_pass = time.monotonic() + self.settings.sweep_seconds
            try:
                reaped, published = sweep_once(self.settings, self.app)
            except Exception:  # a database outage must not kill the loop; it logs and tries again
                log.exception("sweep failed")
                continue
            if reaped or published:
                log.info("sweep: %d reaped, %d published", reaped, published)

    def _dispatch_webhooks(self) -> None:
        try:
            dispatch_now(self.settings, self.app)
        except Exception:  # as a pass's: logged; the next pass dispatches what this one missed
            log.exception("webhook dispatch on a wake failed")

    def stop(self) -> None:
        self._stop_event.set()
        self._woken.set()
