"""Slots for requests that hold a server thread for long: completions waiting for their job or streaming it,
and job event streams. A WSGI server gives each request a thread until its response ends, so without a
limit enough slow clients would take every thread and the API would stop answering anything, health
checks included. Past `CANVAS_MAX_LONG_REQUESTS` in this process such a request gets 503 with Retry-After
before anything is recorded; short requests are never counted. Knows Flask's app, not what is waited on."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask, current_app

from shared.errors import Overloaded

RETRY_SECONDS = 5


class LongRequestSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self) -> Callable[[], None]:
        """Take a slot or raise Overloaded; returns its release (safe to call more than once)."""
        with self._lock:
            if self.limit > 0 and self.held >= self.limit:
                raise Overloaded(
                    f"this API process already serves {self.held} waiting or streaming requests, the most "
                    f"it holds at once (CANVAS_MAX_LONG_REQUESTS={self.limit}); retry shortly, or submit a "
                    "job (POST /v1/jobs) and follow it with a webhook",
                    RETRY_SECONDS,
                )
            self.held += 1
        held = [True]

        def release() -> None:
            with self._lock:
                if held[0]:
                    held[0] = False
                    self.held -= 1

        return release


def install(app: Flask, limit: int) -> None:
    app.extensions["canvas.long_requests"] = LongRequestSlots(limit)


def take_slot() -> Callable[[], None]:
    """A slot of the current app (see LongRequestSlots.take)."""
    slots: LongRequestSlots = current_app.extensions["canvas.long_requests"]
    return slots.take()
