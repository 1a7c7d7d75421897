"""Delivering one webhook message: sign, POST, log the attempt, schedule the retry or give up.

Runs on the webhook worker (CPU, its own queue). Knows HTTP and the database, not torch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import requests
from sqlalchemy import update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared import ssrf
from shared.db import session_scope
from shared.metrics import WEBHOOK_DELIVERIES
from shared.models import WebhookAttempt, WebhookEndpoint, WebhookMessage, utcnow
from shared.queue import ClaimFailed
from shared.settings import Settings
from shared.ssrf import UnsafeURL, check_url, parse_allow_list
from shared.webhook_wake import mark_due
from shared.webhooks import signature_header, tenant_secret
from worker.pinned_http import post_within

log = logging.getLogger(__name__)
EXCERPT_CHARS = 500
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0  # a receiver cannot push a retry further than a day out


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery is its worker's: longer than everything one attempt may take (the DNS
    look-up's deadline, the POST's overall deadline), plus room for the database writes around them."""
    timeout = settings.webhook_timeout_seconds
    return ssrf.RESOLVE_TIMEOUT_SECONDS + timeout + max(5.0, timeout)


def claim(settings: Settings, message_id: str) -> datetime | None:
    """pending -> delivering with a lease; returns the lease's expiry, which identifies this claim, or None
    if another delivery has the message or it is done."""
    lease = utcnow() + timedelta(seconds=lease_seconds(settings))
    with session_scope(settings.database_url) as session:
        stmt = (
            update(WebhookMessage)
            .where(WebhookMessage.id == message_id, WebhookMessage.status == "pending")
            .values(status="delivering", lease_expires_at=lease, attempts=WebhookMessage.attempts + 1)
        )
        return lease if session.execute(stmt).rowcount == 1 else None  # type: ignore[attr-defined]


def _request(settings: Settings, message_id: str) -> tuple[str, dict[str, str], str, int] | str:
    """(url, headers, body, attempt) for the claimed message, or the reason it cannot be sent."""
    with session_scope(settings.database_url) as session:
        message = session.get(WebhookMessage, message_id)
        assert message is not None
        if message.endpoint_id:
            endpoint = session.get(WebhookEndpoint, message.endpoint_id)
            if endpoint is None or endpoint.status != "enabled":
                return "the endpoint is disabled"
            keys = (endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at)
        else:
            row, _ = tenant_secret(session, message.tenant_id)
            keys = (row.secret, row.previous_secret, row.previous_secret_expires_at)
        body = json.dumps(message.payload, separators=(",", ":"))
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "Canvas-Webhooks/1",
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(*keys, message.id, timestamp, body),
        }
        return message.url, headers, body, message.attempts


@dataclass
class Outcome:
    """What one attempt got: the status code (None if no answer), an error, a body excerpt, Retry-After."""

    status: int | None = None
    error: str | None = None
    excerpt: str | None = None
    retry_after: float | None = None
    latency_ms: float = 0.0


def deliver(settings: Settings, message_id: str) -> str:
    """One delivery attempt of a message. Returns its outcome (delivered, retrying, failed, skipped or
    superseded),
    which canvas_webhook_deliveries_total counts."""
    outcome = _deliver(settings, message_id)
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    return outcome


def _deliver(settings: Settings, message_id: str) -> str:
    try:
        lease = claim(settings, message_id)
    except (OperationalError, InterfaceError) as exc:  # the database is down: this delivery must come again
        raise ClaimFailed(f"webhook message {message_id} could not be claimed: {exc.orig or exc}") from exc
    if lease is None:
        return "skipped"
    prepared = _request(settings, message_id)
    if isinstance(prepared, str):
        return _record(settings, message_id, lease, Outcome(error=prepared), final=True)
    url, headers, body, attempt = prepared
    started = time.monotonic()
    outcome = Outcome()
    try:
        # Again at delivery (DNS may have changed), and the POST goes to the address just checked.
        addresses = check_url(url, parse_allow_list(settings.webhook_allow))
        reply = post_within(
            url,
            [str(a) for a in addresses],
            settings.webhook_timeout_seconds,
            data=body.encode(),
            headers=headers,
            allow_redirects=False,
        )
        outcome.status = reply.status_code
        outcome.excerpt = reply.body_start.decode("utf-8", "replace")[:EXCERPT_CHARS]
        outcome.retry_after = retry_after_seconds(reply.headers.get("Retry-After"))
    except UnsafeURL as exc:
        outcome.error = f"refused by the SSRF guard: {exc}"
    except requests.RequestException as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:500]
    outcome.latency_ms = round((time.monotonic() - started) * 1000, 1)
    return _record(settings, message_id, lease, outcome, attempt=attempt)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) in seconds from now, at most
    MAX_RETRY_AFTER_SECONDS; None if absent or unreadable."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return min(max((when - utcnow()).total_seconds(), 0.0), MAX_RETRY_AFTER_SECONDS)


def _record(
    settings: Settings, message_id: str, lease: datetime, outcome: Outcome, *, attempt: int = 0, final: bool = False
) -> str:
    """Log the attempt and move the message (and its endpoint) to what the answer means, if this delivery
    still holds the message's lease. A delivery that outlived its lease (the message was recovered, and
    maybe delivered again since) only logs its attempt: the newer state stands."""
    now = utcnow()
    with session_scope(settings.database_url) as session:
        held = (
            update(WebhookMessage)  # first: takes the row's write lock, so no recovery can come between
            .where(
                WebhookMessage.id == message_id,
                WebhookMessage.status == "delivering",
                WebhookMessage.lease_expires_at == lease,
            )
            .values(lease_expires_at=None, last_status_code=outcome.status)
        )
        current = session.execute(held).rowcount == 1  # type: ignore[attr-defined]
        message = session.get(WebhookMessage, message_id)
        assert message is not None
        session.add(
            WebhookAttempt(
                message_id=message_id,
                attempt=attempt or message.attempts,
                status_code=outcome.status,
                latency_ms=outcome.latency_ms,
                error=outcome.error,
                response_excerpt=outcome.excerpt,
                created_at=now,
            )
        )
        if not current:
            log.warning("webhook message %s: a delivery that outlived its lease; its result is only logged", message_id)
            return "superseded"
        settled = _settle(settings, session, message, outcome, now, final)
        if settled in ("delivered", "failed") and message.job_id is not None:
            mark_due(session)  # the job's next message to this destination may go now
        return settled


def _settle(
    settings: Settings, session: Session, message: WebhookMessage, outcome: Outcome, now: datetime, final: bool
) -> str:
    """The message's next state after an attempt it held: delivered, failed, or pending for a retry."""
    status = outcome.status
    endpoint = session.get(WebhookEndpoint, message.endpoint_id) if message.endpoint_id else None
    if status is not None and 200 <= status < 300:
        message.status, message.delivered_at = "delivered", now
        if endpoint is not None:
            endpoint.failing_since = None
        return "delivered"
    if status == 410:
        message.status = "failed"
        if endpoint is not None:
            _disable(endpoint, "the receiver answered 410 Gone")
        return "failed"
    if endpoint is not None:
        endpoint.failing_since = endpoint.failing_since or now
        if (now - endpoint.failing_since).total_seconds() > settings.webhook_disable_after_seconds:
            _disable(endpoint, f"every delivery failed for {settings.webhook_disable_after_seconds:.0f} s")
    retries = settings.webhook_schedule
    if final or message.attempts > len(retries):
        message.status = "failed"
        return "failed"
    delay = retries[message.attempts - 1] * random.uniform(0.9, 1.1)  # jitter spreads retries of many messages
    message.status = "pending"
    message.next_attempt_at = now + timedelta(seconds=max(delay, outcome.retry_after or 0.0))
    return "retrying"


def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
    endpoint.status, endpoint.disabled_reason, endpoint.updated_at = "disabled", reason, utcnow()
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)
