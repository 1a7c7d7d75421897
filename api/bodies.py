"""Reading request bodies: JSON objects only, with a clear 400 when they are not."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request

from shared.errors import CanvasError


class MalformedBody(CanvasError):
    type = "invalid_json_error"


def read_json_object() -> dict[str, Any]:
    """The body as a JSON object. Oversized bodies raise 413 (MAX_CONTENT_LENGTH) before parsing; bodies
    Python's json cannot take (an integer of over 4,300 digits, nesting deeper than its recursion limit)
    and strings with a NUL character or a lone UTF-16 surrogate escape such as "\\ud800" (no database column
    or tokenizer takes either) are a 400."""
    raw = request.get_data(cache=True)
    if not raw:
        raise MalformedBody("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and int() past its digit limit
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedBody("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise MalformedBody("the request body must be a JSON object")
    if (where := _unstorable_string_at(body)) is not None:
        raise MalformedBody(
            f"{where or 'a key'}: strings may not contain the NUL character (\\u0000) or a lone surrogate "
            "escape (\\ud800 to \\udfff not in a valid pair)",
            where,
        )
    return body


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # json.loads joins valid pairs: what is left is unpaired


def _unstorable_string_at(body: dict[str, Any]) -> str | None:
    """The dotted path of the first string (key or value) holding a NUL or a lone surrogate, else None."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and UNSTORABLE.search(value):
            return path
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(key, str) and UNSTORABLE.search(key):
                return path
            stack.append((f"{path}.{key}" if path else str(key), item))
    return None
