"""Webhooks: every tenant's endpoints, the recent deliveries with their status codes, and replay (the same
function as the public API's replay, shared/webhooks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Response, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.admin.blueprint import bp
from api.state import db_session
from shared.errors import InvalidRequest, NotFound
from shared.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from shared.webhooks import replay_message

MESSAGE_STATUSES = ("pending", "delivering", "delivered", "failed")
RECENT = 50


@dataclass
class Delivery:
    """A message and its last attempt (status code, error), as the delivery tables show them."""

    message: WebhookMessage
    last: WebhookAttempt | None


def deliveries(session: Session, stmt: Any, limit: int = RECENT) -> list[Delivery]:
    """The newest messages of `stmt` (a select of WebhookMessage), each with its latest attempt."""
    messages = list(session.scalars(stmt.order_by(WebhookMessage.created_at.desc()).limit(limit)))
    last: dict[str, WebhookAttempt] = {}
    if messages:
        attempts = select(WebhookAttempt).where(WebhookAttempt.message_id.in_([m.id for m in messages]))
        for attempt in session.scalars(attempts.order_by(WebhookAttempt.id)):
            last[attempt.message_id] = attempt
    return [Delivery(m, last.get(m.id)) for m in messages]


@bp.get("/webhooks")
def webhooks_page() -> str:
    session = db_session()
    status = request.args.get("status") or ""
    if status and status not in MESSAGE_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(MESSAGE_STATUSES)}", "status")
    stmt = select(WebhookMessage)
    if status:
        stmt = stmt.where(WebhookMessage.status == status)
    endpoints = session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at.desc()).limit(100))
    return render_template(
        "admin/webhooks.html",
        endpoints=list(endpoints),
        deliveries=deliveries(session, stmt),
        status=status,
        statuses=MESSAGE_STATUSES,
    )


@bp.post("/webhooks/deliveries/<message_id>/replay")
def replay(message_id: str) -> Response:
    session = db_session()
    message = session.get(WebhookMessage, message_id)
    if message is None:
        raise NotFound(f"no webhook delivery {message_id!r}", "id")
    replay_message(session, message)
    session.commit()
    back = request.form.get("back") or ""
    return redirect(back if back.startswith("/admin/") else url_for("admin.webhooks_page"))
