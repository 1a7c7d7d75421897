"""Domain errors. The API maps each to one JSON error shape and status in one place (api/errors.py)."""

from __future__ import annotations


class CanvasError(Exception):
    """Base class. `type` names the error for clients; `param` names the offending field, if any."""

    type = "canvas_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(CanvasError):
    type = "invalid_request_error"


class NotFound(CanvasError):
    type = "not_found_error"


class Conflict(CanvasError):
    type = "conflict_error"


class Unauthorized(CanvasError):
    type = "authentication_error"


class Forbidden(CanvasError):
    type = "permission_error"


class QuotaExceeded(CanvasError):
    """A tenant's stored data would pass its quota (413): the message says how much is held and allowed."""

    type = "quota_exceeded_error"


class IllegalTransition(CanvasError):
    type = "conflict_error"


class Unavailable(CanvasError):
    """Something registered that the service cannot use now (503), such as a model whose tokenizer files
    are missing or unreadable: the operator must fix it, the client cannot; the message says what."""

    type = "service_unavailable_error"


class RetryLater(CanvasError):
    """Refused for now: the client should retry after `retry_after` seconds (sent as Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class RateLimited(RetryLater):
    """Too much, too fast from one tenant (429)."""

    type = "rate_limit_error"


class Overloaded(RetryLater):
    """This API process is at its limit of long-held requests (503)."""

    type = "overloaded_error"
