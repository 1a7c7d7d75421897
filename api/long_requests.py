"""Slots for requests that hold a server thread for long: completions waiting for their job or streaming it,
and job event streams. A WSGI server gives each request a thread until its response ends, so without a
limit enough slow clients would take every thread and the API would stop answering anything, health
checks included. Past `CANVAS_MAX_LONG_REQUESTS` in this process, or past
`CANVAS_MAX_LONG_REQUESTS_PER_TENANT` held by the request's tenant (so one tenant cannot take every slot
from the others), such a request gets 503 with Retry-After before anything is recorded; short requests are
never counted. Knows Flask's app and the request's tenant, not what is waited on."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from flask import Flask, Response, current_app

from api.auth import current_principal
from shared.errors import Overloaded

RETRY_SECONDS = 5
ADVICE = "retry shortly, or submit a job (POST /v1/jobs) and follow it with a webhook"


class LongRequestSlots:
    def __init__(self, limit: int, per_tenant: int = 0) -> None:
        self.limit = limit
        self.per_tenant = per_tenant
        self.held = 0
        self.by_tenant: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, tenant: str) -> Callable[[], None]:
        """Take a slot for `tenant` or raise Overloaded; returns its release (safe to call more than once)."""
        with self._lock:
            if self.limit > 0 and self.held >= self.limit:
                raise Overloaded(
                    f"this API process already serves {self.held} waiting or streaming requests, the most "
                    f"it holds at once (CANVAS_MAX_LONG_REQUESTS={self.limit}); {ADVICE}",
                    RETRY_SECONDS,
                )
            if self.per_tenant > 0 and self.by_tenant[tenant] >= self.per_tenant:
                raise Overloaded(
                    f"this API process already serves {self.by_tenant[tenant]} waiting or streaming requests "
                    f"of your tenant, the most one tenant may hold (CANVAS_MAX_LONG_REQUESTS_PER_TENANT="
                    f"{self.per_tenant}); {ADVICE}",
                    RETRY_SECONDS,
                )
            self.held += 1
            self.by_tenant[tenant] += 1
        held = [True]

        def release() -> None:
            with self._lock:
                if held[0]:
                    held[0] = False
                    self.held -= 1
                    self.by_tenant[tenant] -= 1
                    if not self.by_tenant[tenant]:
                        del self.by_tenant[tenant]

        return release


def install(app: Flask, limit: int, per_tenant: int = 0) -> None:
    app.extensions["canvas.long_requests"] = LongRequestSlots(limit, per_tenant)


def take_slot(tenant: str | None = None) -> Callable[[], None]:
    """A slot of the current app for `tenant`, by default the request's authenticated tenant (see
    LongRequestSlots.take); admin pages, which authenticate by session, name the admin's tenant."""
    slots: LongRequestSlots = current_app.extensions["canvas.long_requests"]
    return slots.take(tenant if tenant is not None else current_principal().tenant_id)


def hold_until_end(response: Response, release: Callable[[], None]) -> Response:
    """Keep a streaming `response`'s slot until its body ends, and give it back then: in the body's last step,
    before the server writes the end of the stream (so a client that has read to the end finds the slot free
    again), or when the client goes away (the response is closed without being read to the end)."""
    body: Iterable[str | bytes] = response.response

    def releasing() -> Iterator[str | bytes]:
        try:
            yield from body
        finally:
            release()

    response.response = releasing()
    response.call_on_close(release)
    return response
