"""Batches: every tenant's batches, newest first, with their progress (lines ended of all) and counts."""

from __future__ import annotations

from flask import render_template, request
from sqlalchemy import and_, or_, select

from api.admin.blueprint import bp
from api.admin.queries import parse_page_size
from api.pagination import decode_cursor, encode_cursor
from api.state import db_session
from shared.batches import BatchStatus, counts_of
from shared.errors import InvalidRequest
from shared.models import Batch

STATUSES = [s.value for s in BatchStatus]


@bp.get("/batches")
def batches_page() -> str:
    session = db_session()
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", "status")
    limit = parse_page_size(request.args.get("limit"))
    stmt = select(Batch).where(Batch.status == status) if status else select(Batch)
    cursor = request.args.get("cursor") or None
    if cursor:
        created, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Batch.created_at < created, and_(Batch.created_at == created, Batch.id < row_id)))
    rows = list(session.scalars(stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    counts = counts_of(session, page)
    return render_template(
        "admin/batches.html",
        rows=[(b, counts[b.id]) for b in page],
        status=status,
        statuses=STATUSES,
        cursor=cursor,
        next_cursor=next_cursor,
    )
