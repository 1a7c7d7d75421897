"""/healthz: no key needed; says whether the database and Redis answer (503 when one does not).

Anyone may call it, so it says only "ok" or "error" per dependency: the error itself (which can name
hosts, users and database names) goes to the log, not to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Response, jsonify
from redis import Redis
from sqlalchemy import text

from api.openapi import describe
from api.response_schemas import Health
from api.state import db_session, settings

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


def _check(name: str, fn: Callable[[], object]) -> str:
    try:
        fn()
    except Exception as exc:  # any failure of a dependency is reported, not raised
        log.warning("health check: %s unavailable: %s: %s", name, type(exc).__name__, exc)
        return "error"
    return "ok"


@bp.get("/healthz")
@describe("Database and Redis health", responses={200: Health, 503: Health}, public=True)
def healthz() -> Response:
    def ping_redis() -> None:
        client = Redis.from_url(settings().redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()

    checks = {
        "database": _check("database", lambda: db_session().execute(text("SELECT 1"))),
        "redis": _check("redis", ping_redis),
    }
    healthy = all(v == "ok" for v in checks.values())
    response = jsonify({"status": "ok" if healthy else "degraded", "checks": checks})
    response.status_code = 200 if healthy else 503
    return response
