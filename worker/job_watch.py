"""A thread beside a running job: renews its lease and notices a cancel request or a lost lease."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select

from shared.db import session_scope
from shared.jobs import renew_lease
from shared.models import Job
from shared.settings import Settings
from shared.states import JobStatus

log = logging.getLogger(__name__)


class JobWatch(threading.Thread):
    """Polls the job row; `should_stop()` turns true when the job is canceling or no longer ours, or when
    the worker shutting down asks for it back (`requeue`, shared by every job of the process)."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, requeue: threading.Event | None = None) -> None:
        super().__init__(name=f"watch-{job_id}", daemon=True)
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.requeue = requeue or threading.Event()  # the worker shuts down: give the job back
        self._done = threading.Event()
        self.deadline = time.monotonic() + settings.max_job_seconds

    @property
    def timed_out(self) -> bool:
        """The job ran past CANVAS_MAX_JOB_SECONDS (the broker would redeliver it after that)."""
        return time.monotonic() > self.deadline

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lease_lost.is_set() or self.requeue.is_set() or self.timed_out

    def run(self) -> None:
        last_renewal = time.monotonic()
        while not self._done.wait(self.settings.cancel_poll_seconds):
            renew_due = time.monotonic() - last_renewal >= self.settings.heartbeat_seconds
            try:
                self._poll(renew=renew_due)
            except Exception:  # the database may blink; the lease has slack for a few missed beats
                log.exception("watch of job %s failed this round", self.job_id)
                continue
            if renew_due:
                last_renewal = time.monotonic()

    def _poll(self, renew: bool) -> None:
        with session_scope(self.settings.database_url) as session:
            if renew and not renew_lease(session, self.job_id, self.attempt, self.settings.lease_seconds):
                log.warning("job %s: lease lost (reaped or finished elsewhere)", self.job_id)
                self.lease_lost.set()
            status = session.scalar(select(Job.status).where(Job.id == self.job_id))
            if status == JobStatus.CANCELING.value:
                self.cancel_requested.set()

    def stop(self) -> None:
        self._done.set()
