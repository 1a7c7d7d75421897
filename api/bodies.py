"""Reading request bodies: JSON objects only, with a clear 400 when they are not."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from shared.errors import CanvasError


class MalformedBody(CanvasError):
    type = "invalid_json_error"


def read_json_object() -> dict[str, Any]:
    """The body as a JSON object. Oversized bodies raise 413 (MAX_CONTENT_LENGTH) before parsing."""
    raw = request.get_data(cache=True)
    if not raw:
        raise MalformedBody("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedBody("the request body must be a JSON object")
    return body
