"""Error pages of the dashboard: HTML that says what happened and what to do (JSON for its poll endpoints)."""

from __future__ import annotations

import logging

from flask import Response, jsonify, render_template
from sqlalchemy.exc import OperationalError

from api.admin.blueprint import bp
from api.admin.session import wants_json
from api.errors import STATUS_BY_ERROR
from shared.errors import CanvasError

log = logging.getLogger(__name__)


def error_page(status: int, title: str, message: str) -> tuple[Response | str, int]:
    if wants_json():
        return jsonify({"error": {"title": title, "message": message}}), status
    return render_template("admin/error.html", title=title, message=message, status=status), status


@bp.errorhandler(CanvasError)
def canvas_error(exc: CanvasError) -> tuple[Response | str, int]:
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(exc, kind)), 400)
    titles = {404: "Not found", 403: "Refused", 409: "Not possible now", 422: "Invalid request"}
    return error_page(status, titles.get(status, "Error"), exc.message)


@bp.errorhandler(OperationalError)
def database_down(exc: OperationalError) -> tuple[Response | str, int]:
    log.warning("database unavailable: %s", exc.orig)
    message = "The database does not answer. Check that it runs and that DATABASE_URL points to it, then reload."
    return error_page(503, "Database unavailable", message)
