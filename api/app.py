"""The Flask app factory. It takes Settings (tests pass their own) and wires blueprints and errors."""

from __future__ import annotations

import logging
import secrets

from flask import Flask, request
from redis import Redis

from api import (
    admin,
    batches,
    completions,
    files,
    fine_tunes,
    health,
    job_events,
    jobs,
    long_requests,
    metrics,
    models,
    openapi,
    readiness,
    webhooks,
)
from api.admin.session import SESSION_LIFETIME, AdminSessionInterface
from api.batch_validation import BatchValidator
from api.errors import register_error_handlers
from api.state import close_db_session
from shared import logs, sealing
from shared.queue import make_celery
from shared.settings import Settings
from shared.sweeper import Sweeper

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, run_sweeper: bool = False, recover_batches: bool = False) -> Flask:
    """Build the API. With run_sweeper, a background thread publishes the outbox and reaps leases. Long batch
    files are validated in a background thread (started on first use); with recover_batches it starts now
    and also validates the batches another process left `validating` (api/batch_validation.py)."""
    settings = settings or Settings.from_env()
    app = Flask("canvas")
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _configure_sessions(app, settings)
    app.extensions["canvas.settings"] = settings
    app.extensions["canvas.celery"] = make_celery(settings, "canvas-api", publish_only=True)
    app.extensions["canvas.redis"] = Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=5)
    long_requests.install(app, settings.max_long_requests, settings.max_long_requests_per_tenant)
    sealing.configure(settings.webhook_sealing_keys)  # a bad key fails here, at start, naming the setting
    blueprints = (jobs.bp, job_events.bp, models.bp, health.bp, openapi.bp, webhooks.bp, files.bp, fine_tunes.bp)
    blueprints += (completions.bp, metrics.bp, batches.bp, readiness.bp)
    for blueprint in (*blueprints, admin.bp):
        app.register_blueprint(blueprint)
    app.teardown_appcontext(close_db_session)
    app.before_request(_bind_job)
    app.teardown_request(lambda _exc: logs.clear())
    register_error_handlers(app)
    app.extensions["canvas.batch_validator"] = validator = BatchValidator(app, recover=recover_batches)
    if recover_batches:
        validator.start()
    if run_sweeper:
        sweeper = Sweeper(settings, app.extensions["canvas.celery"])
        sweeper.start()
        app.extensions["canvas.sweeper"] = sweeper
    return app


def _bind_job() -> None:
    """A request about one job logs its id (its tenant is bound once the key is checked: api/auth.py)."""
    logs.clear()  # a thread serves many requests (gunicorn gthread): nothing carries over
    if job_id := (request.view_args or {}).get("job_id"):
        logs.bind(job_id=job_id)


def _configure_sessions(app: Flask, settings: Settings) -> None:
    """Signed session cookies for the admin dashboard (the API itself uses bearer keys, never cookies)."""
    if not settings.secret_key:
        log.warning("CANVAS_SECRET_KEY is not set: admin sessions last as long as this process")
    app.secret_key = settings.secret_key or secrets.token_hex(32)
    app.session_interface = AdminSessionInterface()  # Secure over HTTPS (api/admin/session.py)
    app.config.update(
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_NAME="canvas_admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/admin",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
