"""GET /v1/jobs/{id}/events: a job's live events as server-sent events.

A subscriber first gets every event so far (or those after its Last-Event-ID), then live ones:
`status` changes, `draft` canvases while denoising (rate-limited by the worker), committed `canvas`es,
and a final `done` event carrying the finished job, after which the stream ends.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request, stream_with_context

from api.auth import authenticate_request, current_principal
from api.errors import InvalidHeader
from api.long_requests import hold_until_end, take_slot
from api.openapi import EVENTS, LAST_EVENT_ID, describe
from api.state import db_session, events_client, release_db_session, settings
from shared.db import session_scope
from shared.events import read_events
from shared.jobs import get_job, job_view
from shared.models import Job
from shared.states import TERMINAL

bp = Blueprint("job_events", __name__, url_prefix="/v1/jobs")
bp.before_request(authenticate_request)
KEEPALIVE_SECONDS = 15.0
TERMINAL_VALUES = {s.value for s in TERMINAL}
EVENT_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")  # a Redis stream id, as the events carry


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def _finished_job(database_url: str, job_id: str) -> dict[str, Any] | None:
    """The job's view if it has reached a terminal status, else None."""
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        return job_view(job) if job is not None and job.status in TERMINAL_VALUES else None


def follow_job(
    database_url: str, client: redis.Redis, job_id: str, after: str, keepalive: float = KEEPALIVE_SECONDS
) -> Iterator[tuple[str, Any, Any]]:
    """A job's events after `after`, live, as (kind, event id, data): each event; then ("done", None, the
    finished job's view) and the end. ("keepalive", None, None) every `keepalive` seconds of quiet, and
    ("error", None, {"message"}) while Redis does not answer (the database still decides the end)."""
    last_keepalive = time.monotonic()
    drafts_after = after  # drafts are a stream of their own (shared/events.py), read from the same time on
    while True:
        got_any = False
        try:
            for event_id, kind, data in read_events(client, job_id, after, block_ms=1000, drafts_after=drafts_after):
                got_any = True
                if kind == "draft":  # no SSE id: a Last-Event-ID names an event, never a passing draft
                    drafts_after = event_id
                    yield kind, None, data
                    continue
                after = event_id
                yield kind, event_id, data
                if kind == "status" and data.get("status") in TERMINAL_VALUES:
                    yield "done", None, _finished_job(database_url, job_id) or {"status": data["status"]}
                    return
        except redis.RedisError as exc:
            yield "error", None, {"message": f"live events are unavailable: {exc}"}
            time.sleep(1.0)
        if not got_any:
            # Nothing new: the database decides whether the job is over (its last event may be lost).
            finished = _finished_job(database_url, job_id)
            if finished is not None:
                yield "status", None, {"status": finished["status"]}
                yield "done", None, finished
                return
            if time.monotonic() - last_keepalive > keepalive:
                last_keepalive = time.monotonic()
                yield "keepalive", None, None


def event_stream(database_url: str, client: redis.Redis, job_id: str, after: str) -> Iterator[str]:
    """`follow_job` as server-sent events."""
    for kind, event_id, data in follow_job(database_url, client, job_id, after):
        yield ": keep-alive\n\n" if kind == "keepalive" else sse(kind, data, event_id)


@bp.get("/<job_id>/events")
@describe("A job's events, live (server-sent events)", responses={200: EVENTS}, headers=[LAST_EVENT_ID])
def stream_job_events(job_id: str) -> Response:
    job = get_job(db_session(), job_id, current_principal().tenant_id)  # 404 for another tenant's job
    release_db_session()  # the stream must not hold a database connection
    return events_response(job.id, last_event_id(), current_principal().tenant_id)


def last_event_id() -> str:
    """The request's Last-Event-ID (where a reconnecting stream resumes), "0-0" without one; 400 if malformed."""
    after = request.headers.get("Last-Event-ID") or "0-0"
    if not EVENT_ID.fullmatch(after):
        raise InvalidHeader(
            f"Last-Event-ID must be an event id such as 1717000000000-0, not {after[:40]!r}", "Last-Event-ID"
        )
    return after


def events_response(job_id: str, after: str, tenant: str) -> Response:
    """The job's events as a server-sent-event response; it holds one of `tenant`'s long-request slots while
    it streams (503 when this process, or that tenant, holds as many long requests as it may). The caller
    has released its database session: a stream never holds a connection."""
    release = take_slot(tenant)
    body = event_stream(settings().database_url, events_client(), job_id, after)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(stream_with_context(body), mimetype="text/event-stream", headers=headers)
    return hold_until_end(response, release)
