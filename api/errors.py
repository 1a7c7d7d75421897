"""One JSON error shape for every failure: {"error": {"type", "message", "param"}}, with the right status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, make_response, request
from pydantic import ValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from api.bodies import MalformedBody
from shared.errors import (
    CanvasError,
    Conflict,
    Forbidden,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    RetryLater,
    Unauthorized,
)

log = logging.getLogger(__name__)


class InvalidHeader(CanvasError):
    """A request header with a value we cannot take (400, naming the header)."""

    type = "invalid_request_error"


STATUS_BY_ERROR: dict[type[CanvasError], int] = {
    MalformedBody: 400,
    InvalidHeader: 400,
    InvalidRequest: 422,
    NotFound: 404,
    Conflict: 409,
    QuotaExceeded: 413,
    RateLimited: 429,
    Overloaded: 503,
    IllegalTransition: 409,
    Unauthorized: 401,
    Forbidden: 403,
}


def error_response(status: int, type_: str, message: str, param: str | None = None) -> Response:
    response = jsonify({"error": {"type": type_, "message": message, "param": param}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="canvas"'
    return response


def _loc(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc]
    return ".".join(parts)


def validation_error(exc: ValidationError, prefix: str = "") -> Response:
    """422 naming the first offending field (dotted path, e.g. `params.t_min`)."""
    return error_response(422, "invalid_request_error", *describe_validation_error(exc, prefix))


def describe_validation_error(exc: ValidationError, prefix: str = "") -> tuple[str, str | None]:
    """(message, param) for the first offending field of `exc`, its path under `prefix`."""
    first = exc.errors(include_url=False)[0]
    param = _loc(first["loc"], prefix) or None
    if first["type"] == "extra_forbidden":
        message = f"unknown field {param!r}"
    elif param:
        message = f"{param}: {first['msg']}"
    else:
        message = first["msg"].removeprefix("Value error, ")
    return message.replace("Value error, ", ""), param


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CanvasError)
    def _canvas_error(exc: CanvasError) -> Response:
        response = error_response(STATUS_BY_ERROR.get(type(exc), 400), exc.type, exc.message, exc.param)
        if isinstance(exc, RetryLater):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        return validation_error(exc)

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        log.warning("database unavailable: %s", exc.orig)
        response = error_response(503, "service_unavailable", "the database is unavailable; retry shortly")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(PoolTimeout)
    def _pool_exhausted(exc: PoolTimeout) -> Response:
        log.warning("database pool exhausted: %s", exc)
        message = "every database connection of this API process is in use; retry shortly"
        response = error_response(503, "service_unavailable", message)
        response.headers["Retry-After"] = "2"
        return response

    @app.errorhandler(DataError)
    def _unstorable(exc: DataError) -> Response:
        """A value the database refuses (a NUL character, a number out of its range): the client's."""
        log.info("database refused a value of the request: %s", exc.orig)
        message = "a value of this request cannot be stored (out of range, or a character such as NUL)"
        return error_response(400, "invalid_request_error", message)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404 and request.path.startswith("/admin/"):  # a mistyped dashboard address: a page
            from api.admin.errors import error_page

            return make_response(*error_page(404, "Not found", "There is no such dashboard page. Go to Jobs."))
        messages = {
            404: "no such route",
            405: "method not allowed on this route",
            413: "the request body is larger than the limit",
        }
        return error_response(status, "http_error", messages.get(status, exc.description or exc.name))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an internal error occurred; it has been logged")
