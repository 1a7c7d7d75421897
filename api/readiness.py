"""/readyz and /livez, the probes of an orchestrator (no key needed).

/readyz: ready to serve when the database answers (503 otherwise). Redis is not asked: a job accepted while
Redis is away waits in the outbox and the sweeper publishes it, so a Redis blip must not take every API
process out of service. /livez: the process answers HTTP, whatever its dependencies (restarting it would
bring neither back). /healthz (api/health.py) reports both dependencies, for people and monitoring.
Neither says why a dependency failed (anyone may call them): the error goes to the log.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.openapi import describe
from api.response_schemas import Liveness, Readiness
from api.state import db_session

bp = Blueprint("readiness", __name__)
log = logging.getLogger(__name__)


@bp.get("/readyz")
@describe(
    "Ready to serve: the database answers (Redis is not needed)",
    responses={200: Readiness, 503: Readiness},
    public=True,
)
def readyz() -> Response:
    try:
        db_session().execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # any failure of the database means not ready; the reason goes to the log
        log.warning("not ready: the database does not answer: %s: %s", type(exc).__name__, exc)
        database = "error"
    ready = database == "ok"
    response = jsonify({"status": "ok" if ready else "unavailable", "checks": {"database": database}})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/livez")
@describe("Alive: this process answers (no dependency is asked)", responses={200: Liveness}, public=True)
def livez() -> Response:
    return jsonify({"status": "ok"})
