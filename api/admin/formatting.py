"""Template filters: durations, times and numbers as an operator reads them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from api.admin.blueprint import bp

DASH = "—"


@bp.app_template_filter("duration")
def duration(ms: float | None) -> str:
    """350 ms, 4.2 s, 3 min 04 s, 2 h 05 min."""
    if not isinstance(ms, int | float):  # None, or a value the row does not have
        return DASH
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@bp.app_template_filter("when")
def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else DASH


@bp.app_template_filter("iso")
def iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


@bp.app_template_filter("number")
def number(value: float | None, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else DASH


@bp.app_template_filter("pretty")
def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
