"""/healthz: no key needed; says whether the database and Redis answer (503 when one does not)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from redis import Redis
from sqlalchemy import text

from api.openapi import describe
from api.response_schemas import Health
from api.state import db_session, settings

bp = Blueprint("health", __name__)


def _check(fn) -> str:
    try:
        fn()
    except Exception as exc:  # any failure of a dependency is reported, not raised
        return f"error: {type(exc).__name__}: {exc}"[:300]
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
        "database": _check(lambda: db_session().execute(text("SELECT 1"))),
        "redis": _check(ping_redis),
    }
    healthy = all(v == "ok" for v in checks.values())
    response = jsonify({"status": "ok" if healthy else "degraded", "checks": checks})
    response.status_code = 200 if healthy else 503
    return response
