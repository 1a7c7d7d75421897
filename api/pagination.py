"""Opaque keyset cursors over (created_at, id), newest first."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from shared.errors import InvalidRequest


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        created_at = datetime.fromisoformat(created)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequest(f"cursor is not valid: {exc}", "cursor") from None
    if created_at.tzinfo is None or not isinstance(row_id, str):  # ours are aware, with a string id
        raise InvalidRequest("cursor is not valid: send the next_cursor of a previous page unchanged", "cursor")
    return created_at, row_id


def parse_limit(value: str | None, default: int = 20, maximum: int = 100) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= maximum:
        raise InvalidRequest(f"limit must be an integer from 1 to {maximum}", "limit")
    return int(value)
