"""One JSON error shape for every failure: {"error": {"type", "message", "param"}}, with the right status.

The OpenAI-compatible routes answer in OpenAI's shape instead (`register_openai_error_handlers`): the same
fields plus `code`, and 400 for every request that is wrong (OpenAI's SDKs raise `BadRequestError` for it).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, make_response, request
from pydantic import ValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

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
    Unavailable,
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
    Unavailable: 503,
    IllegalTransition: 409,
    Unauthorized: 401,
    Forbidden: 403,
}


# OpenAI's `code` of each error (OpenAI's own names where it has one)
OPENAI_CODES: dict[type[CanvasError], str] = {
    MalformedBody: "invalid_json",
    InvalidRequest: "invalid_value",
    NotFound: "not_found",
    Conflict: "conflict",
    RateLimited: "rate_limit_exceeded",
    Overloaded: "overloaded",
    Unavailable: "model_unavailable",
    IllegalTransition: "conflict",
    Unauthorized: "invalid_api_key",
    Forbidden: "permission_denied",
}
PYDANTIC_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


def error_response(status: int, type_: str, message: str, param: str | None = None, **extra: Any) -> Response:
    """The error as JSON; `extra` adds fields to it (OpenAI's `code`)."""
    response = jsonify({"error": {"type": type_, "message": message, "param": param, **extra}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="canvas"'
    return response


def _loc(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc]
    return ".".join(parts)


def validation_error(exc: ValidationError, prefix: str = "", status: int = 422, **extra: str | None) -> Response:
    """422 (or `status`) naming the first offending field (dotted path, e.g. `params.t_min`)."""
    return error_response(status, "invalid_request_error", *describe_validation_error(exc, prefix), **extra)


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


def canvas_error_response(exc: CanvasError, status: int | None = None, **extra: str | None) -> Response:
    """A domain error with its status (or `status`) and, for RetryLater, its Retry-After."""
    status = status or STATUS_BY_ERROR.get(type(exc), 400)
    response = error_response(status, exc.type, exc.message, exc.param, **extra)
    if isinstance(exc, RetryLater):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def openai_code(exc: CanvasError) -> str:
    """OpenAI's `code` for a domain error: the error's own, else its class's (`model_not_found` for a model)."""
    if isinstance(exc, NotFound) and exc.param == "model":
        return "model_not_found"
    own = getattr(exc, "code", None)
    return own or next((code for cls, code in OPENAI_CODES.items() if isinstance(exc, cls)), "error")


def register_openai_error_handlers(bp: Blueprint) -> None:
    """Errors on `bp`'s routes in OpenAI's shape (`code` added), bad input as 400 rather than 422."""

    @bp.errorhandler(CanvasError)
    def _canvas_error(exc: CanvasError) -> Response:
        status = 400 if isinstance(exc, InvalidRequest | MalformedBody) else None
        return canvas_error_response(exc, status, code=openai_code(exc))

    @bp.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return error_response(413, "http_error", "the request body is larger than the limit", code="request_too_large")

    @bp.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        first = exc.errors(include_url=False)[0]["type"]
        return validation_error(exc, status=400, code=PYDANTIC_CODES.get(first, "invalid_value"))


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CanvasError)
    def _canvas_error(exc: CanvasError) -> Response:
        return canvas_error_response(exc)

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
