"""/v1/webhook_endpoints, /v1/webhook_secret and the delivery log with replay."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import authenticate_request, current_principal
from api.bodies import read_json_object
from api.openapi import describe
from api.response_schemas import WebhookDeliveryList, WebhookEndpointList, WebhookSecret
from api.response_schemas import WebhookEndpoint as EndpointShape
from api.schemas import DeliveriesQuery
from api.state import db_session, settings
from api.webhook_schemas import EndpointCreate, EndpointUpdate
from shared.db import commit_retrying
from shared.errors import InvalidRequest, NotFound
from shared.jobs import get_job
from shared.models import WebhookAttempt, WebhookEndpoint, WebhookMessage, utcnow
from shared.ssrf import UnsafeURL, check_url, parse_allow_list
from shared.views import iso
from shared.webhooks import new_secret, replay_message, tenant_secret

bp = Blueprint("webhooks", __name__)
bp.before_request(authenticate_request)
MESSAGE_STATUSES = ("pending", "delivering", "delivered", "failed")


def check_webhook_url(url: str, param: str) -> None:
    """422 naming the reason when the SSRF guard refuses the URL."""
    try:
        check_url(url, parse_allow_list(settings().webhook_allow))
    except UnsafeURL as exc:
        raise InvalidRequest(f"{param} is not allowed: {exc}", param) from None


def endpoint_view(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    view = {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "events": endpoint.events,
        "description": endpoint.description,
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": iso(endpoint.failing_since),
        "created_at": iso(endpoint.created_at),
        "updated_at": iso(endpoint.updated_at),
    }
    if secret is not None:
        view["secret"] = secret  # shown once: at creation and at rotation
    return view


def delivery_view(message: WebhookMessage, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": message.id,
        "object": "webhook_delivery",
        "event_type": message.event_type,
        "status": message.status,
        "job_id": message.job_id,
        "endpoint_id": message.endpoint_id,
        "url": message.url,
        "attempts": message.attempts,
        "last_status_code": message.last_status_code,
        "next_attempt_at": iso(message.next_attempt_at) if message.status == "pending" else None,
        "created_at": iso(message.created_at),
        "delivered_at": iso(message.delivered_at),
        "log": [
            {
                "attempt": a.attempt,
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "response_excerpt": a.response_excerpt,
                "at": iso(a.created_at),
            }
            for a in attempts
        ],
    }


def deliveries_response(session: Session, stmt: Any) -> Response:
    status = request.args.get("status")
    if status is not None:
        if status not in MESSAGE_STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(MESSAGE_STATUSES)}", "status")
        stmt = stmt.where(WebhookMessage.status == status)
    messages = list(session.scalars(stmt.order_by(WebhookMessage.created_at.desc()).limit(100)))
    ids = [m.id for m in messages]
    attempts: dict[str, list[WebhookAttempt]] = {i: [] for i in ids}
    if ids:
        for a in session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.message_id.in_(ids)).order_by(WebhookAttempt.id)
        ):
            attempts[a.message_id].append(a)
    return jsonify({"object": "list", "data": [delivery_view(m, attempts[m.id]) for m in messages]})


def _endpoint(session: Session, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.tenant_id != current_principal().tenant_id:
        raise NotFound(f"no webhook endpoint with id {endpoint_id!r}", "id")
    return endpoint


@bp.post("/v1/webhook_endpoints")
@describe("Create a webhook endpoint", body=EndpointCreate, responses={201: EndpointShape})
def create_endpoint() -> Response:
    body = EndpointCreate.model_validate(read_json_object())
    check_webhook_url(body.url, "url")
    session = db_session()
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id="we_" + uuid.uuid4().hex[:24],
        tenant_id=current_principal().tenant_id,
        url=body.url,
        events=list(dict.fromkeys(body.events)),
        description=body.description,
        secret=secret,
        status="enabled",
    )
    session.add(endpoint)
    session.commit()
    response = jsonify(endpoint_view(endpoint, secret))
    response.status_code = 201
    return response


@bp.get("/v1/webhook_endpoints")
@describe("List webhook endpoints", responses={200: WebhookEndpointList})
def list_endpoints() -> Response:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == current_principal().tenant_id)
    rows = db_session().scalars(stmt.order_by(WebhookEndpoint.created_at.desc()))
    return jsonify({"object": "list", "data": [endpoint_view(e) for e in rows]})


@bp.get("/v1/webhook_endpoints/<endpoint_id>")
@describe("Get a webhook endpoint", responses={200: EndpointShape})
def get_endpoint(endpoint_id: str) -> Response:
    return jsonify(endpoint_view(_endpoint(db_session(), endpoint_id)))


@bp.patch("/v1/webhook_endpoints/<endpoint_id>")
@describe("Update a webhook endpoint", body=EndpointUpdate, responses={200: EndpointShape})
def update_endpoint(endpoint_id: str) -> Response:
    body = EndpointUpdate.model_validate(read_json_object())
    session = db_session()
    endpoint = _endpoint(session, endpoint_id)
    if body.url is not None:
        check_webhook_url(body.url, "url")
        endpoint.url = body.url
    if body.events is not None:
        endpoint.events = list(dict.fromkeys(body.events))
    if body.description is not None:
        endpoint.description = body.description
    if body.enabled is True:
        endpoint.status, endpoint.disabled_reason, endpoint.failing_since = "enabled", None, None
    elif body.enabled is False:
        endpoint.status, endpoint.disabled_reason = "disabled", "disabled by the user"
    endpoint.updated_at = utcnow()
    session.commit()
    return jsonify(endpoint_view(endpoint))


@bp.delete("/v1/webhook_endpoints/<endpoint_id>")
@describe("Delete a webhook endpoint", responses={204: None})
def delete_endpoint(endpoint_id: str) -> Response:
    # Deleting an endpoint deletes its messages and attempts (ON DELETE CASCADE), whose rows the webhook
    # worker may be updating in another order: a deadlock PostgreSQL breaks by aborting one side.
    commit_retrying(db_session(), lambda session: session.delete(_endpoint(session, endpoint_id)))
    return Response(status=204)


@bp.post("/v1/webhook_endpoints/<endpoint_id>/rotate_secret")
@describe("Rotate an endpoint's secret", responses={200: EndpointShape})
def rotate_endpoint_secret(endpoint_id: str) -> Response:
    """A new secret, shown once; the previous one keeps signing (a second signature) for a while."""
    session = db_session()
    endpoint = _endpoint(session, endpoint_id)
    endpoint.previous_secret, endpoint.secret = endpoint.secret, new_secret()
    endpoint.previous_secret_expires_at = utcnow() + timedelta(seconds=settings().webhook_rotation_seconds)
    endpoint.updated_at = utcnow()
    session.commit()
    return jsonify(endpoint_view(endpoint, endpoint.secret))


@bp.get("/v1/webhook_endpoints/<endpoint_id>/deliveries")
@describe("An endpoint's deliveries", query=DeliveriesQuery, responses={200: WebhookDeliveryList})
def endpoint_deliveries(endpoint_id: str) -> Response:
    session = db_session()
    endpoint = _endpoint(session, endpoint_id)
    return deliveries_response(session, select(WebhookMessage).where(WebhookMessage.endpoint_id == endpoint.id))


@bp.post("/v1/webhook_endpoints/<endpoint_id>/deliveries/<message_id>/replay")
@describe("Send a delivery again", responses={200: WebhookDeliveryList})
def replay_delivery(endpoint_id: str, message_id: str) -> Response:
    """Send a message again (same webhook-id, so receivers can deduplicate), with a fresh retry schedule."""
    session = db_session()
    endpoint = _endpoint(session, endpoint_id)
    message = session.get(WebhookMessage, message_id)
    if message is None or message.endpoint_id != endpoint.id:
        raise NotFound(f"no delivery {message_id!r} for this endpoint", "id")
    replay_message(session, message)
    session.commit()
    return deliveries_response(session, select(WebhookMessage).where(WebhookMessage.id == message.id))


@bp.get("/v1/jobs/<job_id>/deliveries")
@describe("A job's webhook deliveries", query=DeliveriesQuery, responses={200: WebhookDeliveryList})
def job_deliveries(job_id: str) -> Response:
    session = db_session()
    job = get_job(session, job_id, current_principal().tenant_id)
    return deliveries_response(session, select(WebhookMessage).where(WebhookMessage.job_id == job.id))


def _secret_view(row: Any, shown: bool) -> dict[str, Any]:
    return {
        "object": "webhook_secret",
        "secret": row.secret if shown else None,
        "prefix": row.secret[:10] + "…",
        "created_at": iso(row.created_at),
    }


@bp.get("/v1/webhook_secret")
@describe("The tenant's default webhook secret", responses={200: WebhookSecret})
def get_webhook_secret() -> Response:
    """The tenant's default secret for per-job webhooks: shown in full only when this call creates it."""
    session = db_session()
    row, created = tenant_secret(session, current_principal().tenant_id)
    session.commit()
    return jsonify(_secret_view(row, shown=created))


@bp.post("/v1/webhook_secret/rotate")
@describe("Rotate the default webhook secret", responses={200: WebhookSecret})
def rotate_webhook_secret() -> Response:
    session = db_session()
    row, _ = tenant_secret(session, current_principal().tenant_id)
    row.previous_secret, row.secret = row.secret, new_secret()
    row.previous_secret_expires_at = utcnow() + timedelta(seconds=settings().webhook_rotation_seconds)
    row.created_at = utcnow()
    session.commit()
    return jsonify(_secret_view(row, shown=True))
