"""Webhook messages: event types, secrets and Standard Webhooks signatures, and the messages a job's
events create. Delivery (HTTP) is the webhook worker's (worker/webhooks.py); dispatch is the sweeper's.

Messages are rows written in the same transaction as the job change that caused them, so an event is
never lost between the database and the queue.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from shared.errors import Conflict, InvalidRequest
from shared.models import Job, TenantWebhookSecret, WebhookEndpoint, WebhookMessage, utcnow
from shared.states import JobStatus
from shared.views import job_view
from shared.webhook_wake import mark_due

JOB_EVENTS = ("job.started", "job.succeeded", "job.failed", "job.canceled", "job.expired", "job.canvas")
FINE_TUNE_EVENTS = ("fine_tune.started", "fine_tune.succeeded", "fine_tune.failed", "fine_tune.canceled")
BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")  # OpenAI's names
EVENT_TYPES = frozenset(JOB_EVENTS + FINE_TUNE_EVENTS + BATCH_EVENTS)
DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.canceled", "job.expired")  # the terminal ones
DEFAULT_FINE_TUNE_EVENTS = ("fine_tune.succeeded", "fine_tune.failed", "fine_tune.canceled")
STATUS_EVENTS = {
    JobStatus.RUNNING: "job.started",
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
    JobStatus.EXPIRED: "job.expired",
}
MAX_PAYLOAD_BYTES = 20_000


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """`v1,` + base64 HMAC-SHA256 over `id.timestamp.body` with the secret's key (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    current: str, previous: str | None, previous_expires: datetime | None, message_id: str, timestamp: int, body: str
) -> str:
    """Space-separated signatures: the current secret's, and during a rotation the previous one's too."""
    signatures = [sign(current, message_id, timestamp, body)]
    if previous and previous_expires and previous_expires > utcnow():
        signatures.append(sign(previous, message_id, timestamp, body))
    return " ".join(signatures)


def tenant_secret(session: Session, tenant_id: str) -> tuple[TenantWebhookSecret, bool]:
    """The tenant's default secret (for per-job targets), created on first use. Returns (row, created)."""
    row = session.get(TenantWebhookSecret, tenant_id)
    if row is not None:
        return row, False
    row = TenantWebhookSecret(tenant_id=tenant_id, secret=new_secret())
    session.add(row)
    session.flush()
    return row, True


def payload_for(event_type: str, data: dict[str, Any], job_id: str) -> dict[str, Any]:
    """{"type", "timestamp", "data"}; an output that would make it larger than about 20 kB is replaced
    by a link to fetch the job."""
    payload = {"type": event_type, "timestamp": utcnow().isoformat().replace("+00:00", "Z"), "data": data}
    if len(json.dumps(payload)) > MAX_PAYLOAD_BYTES and isinstance(data.get("output"), dict):
        data = {
            **data,
            "output": {
                "truncated": True,
                "url": f"/v1/jobs/{job_id}",
                "finish_reason": data["output"].get("finish_reason"),
            },
        }
        data.pop("input", None)
        payload["data"] = data
    return payload


def endpoint_destinations(session: Session, tenant_id: str, event_type: str) -> list[tuple[str | None, str]]:
    """(id, url) of the tenant's enabled endpoints subscribed to this event, oldest first. Reads only their
    ids, urls and event filters, never their secrets: a process that records events (every one that
    changes a job's status) needs no sealing key; only the webhook worker, which signs, does."""
    stmt = (
        select(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.events)
        .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.status == "enabled")
        .order_by(WebhookEndpoint.created_at)
    )
    return [(id_, url) for id_, url, events in session.execute(stmt) if event_type in events]


def destinations(session: Session, job: Job, event_type: str) -> list[tuple[str | None, str]]:
    """(endpoint id or None for the job's own target, url) for every receiver of this event. None for a
    batch's line: its batch reports it (batch.* events, shared/batch_finalizer.py)."""
    if job.batch_id is not None:
        return []
    found = endpoint_destinations(session, job.tenant_id, event_type)
    target = job.webhook or {}
    defaults = DEFAULT_FINE_TUNE_EVENTS if job.kind == "fine_tune" else DEFAULT_EVENTS
    if target.get("url") and event_type in (target.get("events") or defaults):
        found.append((None, target["url"]))
    return found


def record_event(session: Session, job: Job, event_type: str, data: dict[str, Any]) -> list[WebhookMessage]:
    """Write one pending message per destination of this event; the caller's transaction commits them."""
    found = destinations(session, job, event_type)
    return _add_messages(session, job.tenant_id, job.id, found, event_type, payload_for(event_type, data, job.id))


def record_tenant_event(
    session: Session, tenant_id: str, event_type: str, data: dict[str, Any]
) -> list[WebhookMessage]:
    """Messages for an event about no job (batch.completed, ...): one per enabled endpoint of the tenant
    subscribed to it. The caller's transaction commits them."""
    found = endpoint_destinations(session, tenant_id, event_type)
    payload = {"type": event_type, "timestamp": utcnow().isoformat().replace("+00:00", "Z"), "data": data}
    return _add_messages(session, tenant_id, None, found, event_type, payload)


def _add_messages(
    session: Session,
    tenant_id: str,
    job_id: str | None,
    found: list[tuple[str | None, str]],
    event_type: str,
    payload: dict[str, Any],
) -> list[WebhookMessage]:
    messages = []
    now = utcnow()
    for endpoint_id, url in found:
        message = WebhookMessage(
            id="msg_" + uuid.uuid4().hex,
            tenant_id=tenant_id,
            job_id=job_id,
            endpoint_id=endpoint_id,
            url=url,
            event_type=event_type,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(message)
        messages.append(message)
    session.flush()
    if messages:
        mark_due(session)
    return messages


def record_status_event(session: Session, job_id: str, status: JobStatus) -> None:
    """Messages for a job's status change (job.started, job.succeeded, ...), if anyone listens."""
    event_type = STATUS_EVENTS.get(status)
    if event_type is None:
        return
    job = session.get(Job, job_id, populate_existing=True)  # the UPDATE bypassed the identity map
    if job is None:
        return
    if job.kind == "fine_tune":
        event_type = event_type.replace("job.", "fine_tune.")
        if event_type not in EVENT_TYPES:
            return
    record_event(session, job, event_type, job_view(job))


def record_canvas_event(session: Session, job_id: str, data: dict[str, Any]) -> None:
    """Messages for a committed canvas, for receivers that asked for job.canvas."""
    job = session.get(Job, job_id)
    if job is not None:
        record_event(session, job, "job.canvas", {"id": job_id, **data})


def wants_canvas_events(session: Session, job_id: str) -> bool:
    job = session.get(Job, job_id)
    return job is not None and bool(destinations(session, job, "job.canvas"))


def replay_message(session: Session, message: WebhookMessage) -> None:
    """Send a message again: the same id (receivers deduplicate on it), a fresh retry schedule. A message
    to an endpoint needs the endpoint enabled; one being delivered right now is refused (Conflict), so the
    attempt in flight keeps its count and its lease. The caller commits, and the sweeper dispatches it
    (woken at once: shared/webhook_wake.py)."""
    if message.endpoint_id:
        status = session.scalar(select(WebhookEndpoint.status).where(WebhookEndpoint.id == message.endpoint_id))
        if status is not None and status != "enabled":
            raise InvalidRequest("the endpoint is disabled; enable it (PATCH enabled=true) before replaying", "id")
    stmt = (
        update(WebhookMessage)
        .where(WebhookMessage.id == message.id, WebhookMessage.status != "delivering")
        .values(status="pending", attempts=0, next_attempt_at=utcnow(), delivered_at=None)
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("the message is being delivered right now; replay it once this attempt has ended", "id")
    session.refresh(message)
    mark_due(session)


def reseal_secrets(session: Session) -> int:
    """Rewrite every stored webhook secret under this process's sealing keys (shared/sealing.py): plain ones
    get sealed, ones sealed by an older key get the first key, and with no keys they are stored plain.
    Returns how many secrets were rewritten."""
    count = 0
    for model in (WebhookEndpoint, TenantWebhookSecret):
        for row in session.scalars(select(model)):
            for name in ("secret", "previous_secret"):
                if getattr(row, name) is not None:
                    flag_modified(row, name)  # the value is plain here: writing it back seals it afresh
                    count += 1
    return count
