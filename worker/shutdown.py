"""A generation worker's graceful shutdown. On SIGTERM Celery stops consuming first (no new job); then
`Drain.drain` gives the running jobs `grace` seconds to finish, and asks those still running to stop and
go back to the queue, which their lifecycle does without spending one of their attempts
(worker/lifecycle.py). A rollout then costs a long job neither an attempt nor a lease timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
STOP_SECONDS = 30.0  # how long requeued jobs get to stop (a denoising step, and one database write)


class Drain:
    """The jobs running in this worker process, and the signal that asks them to go back to the queue."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.requeue = threading.Event()  # set: every running job stops and is requeued
        self._running = 0
        self._changed = threading.Condition()

    @contextmanager
    def job(self) -> Iterator[None]:
        """Count a job as running for the block."""
        with self._changed:
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    @property
    def running(self) -> int:
        return self._running

    def drain(self) -> int:
        """Wait up to the grace period for the running jobs, then requeue the rest and wait for them to
        stop. Returns how many were asked to go back."""
        started = time.monotonic()
        with self._changed:
            if self._running:
                log.info("shutting down: %d job(s) running get %.0f s to finish", self._running, self.grace_seconds)
            if self._changed.wait_for(lambda: self._running == 0, self.grace_seconds):
                return 0
            left = self._running
        log.warning("shutting down: requeueing %d job(s) still running after %.1f s", left, time.monotonic() - started)
        self.requeue.set()
        with self._changed:
            if not self._changed.wait_for(lambda: self._running == 0, STOP_SECONDS):
                log.error("shutting down: %d job(s) did not stop; their leases will expire", self._running)
        return left
