"""Delivering one webhook message: sign, POST, log the attempt, schedule the retry or give up.

Runs on the webhook worker (CPU, its own queue). Knows HTTP and the database, not torch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import timedelta

import requests
from sqlalchemy import update

from shared.db import session_scope
from shared.metrics import WEBHOOK_DELIVERIES
from shared.models import WebhookAttempt, WebhookEndpoint, WebhookMessage, utcnow
from shared.settings import Settings
from shared.ssrf import UnsafeURL, check_url, parse_allow_list
from shared.webhooks import signature_header, tenant_secret
from worker.pinned_http import post_to_first

log = logging.getLogger(__name__)
EXCERPT_CHARS = 500


def claim(settings: Settings, message_id: str) -> bool:
    """pending -> delivering with a lease; False if another delivery has it or it is done."""
    lease = utcnow() + timedelta(seconds=2 * settings.webhook_timeout_seconds + 5)
    with session_scope(settings.database_url) as session:
        stmt = (
            update(WebhookMessage)
            .where(WebhookMessage.id == message_id, WebhookMessage.status == "pending")
            .values(status="delivering", lease_expires_at=lease, attempts=WebhookMessage.attempts + 1)
        )
        return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]


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


def deliver(settings: Settings, message_id: str) -> str:
    """One delivery attempt of a message. Returns its outcome (delivered, retrying, failed or skipped),
    which canvas_webhook_deliveries_total counts."""
    outcome = _deliver(settings, message_id)
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    return outcome


def _deliver(settings: Settings, message_id: str) -> str:
    if not claim(settings, message_id):
        return "skipped"
    prepared = _request(settings, message_id)
    if isinstance(prepared, str):
        _record(settings, message_id, None, 0.0, prepared, None, final=True)
        return "failed"
    url, headers, body, attempt = prepared
    started = time.monotonic()
    status, error, excerpt, retry_after = None, None, None, None
    try:
        # Again at delivery (DNS may have changed), and the POST goes to the address just checked.
        addresses = check_url(url, parse_allow_list(settings.webhook_allow))
        response = post_to_first(
            url,
            [str(a) for a in addresses],
            data=body.encode(),
            headers=headers,
            timeout=settings.webhook_timeout_seconds,
            allow_redirects=False,
        )
        status, excerpt = response.status_code, response.text[:EXCERPT_CHARS]
        retry_after = _retry_after(response.headers.get("Retry-After"))
    except UnsafeURL as exc:
        error = f"refused by the SSRF guard: {exc}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    return _record(settings, message_id, status, latency_ms, error, excerpt, attempt=attempt, retry_after=retry_after)


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _record(
    settings: Settings,
    message_id: str,
    status: int | None,
    latency_ms: float,
    error: str | None,
    excerpt: str | None,
    *,
    attempt: int = 0,
    retry_after: float | None = None,
    final: bool = False,
) -> str:
    """Log the attempt and move the message (and its endpoint) to what the answer means."""
    now = utcnow()
    with session_scope(settings.database_url) as session:
        message = session.get(WebhookMessage, message_id)
        assert message is not None
        session.add(
            WebhookAttempt(
                message_id=message_id,
                attempt=attempt or message.attempts,
                status_code=status,
                latency_ms=latency_ms,
                error=error,
                response_excerpt=excerpt,
                created_at=now,
            )
        )
        message.last_status_code = status
        message.lease_expires_at = None
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
        message.next_attempt_at = now + timedelta(seconds=max(delay, retry_after or 0.0))
        return "retrying"


def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
    endpoint.status, endpoint.disabled_reason, endpoint.updated_at = "disabled", reason, utcnow()
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)
