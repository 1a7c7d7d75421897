"""Jobs: the table (filters, search by id, keyset pages, a JSON poll that refreshes it), a job's page with
its live canvas (a session-authenticated copy of the SSE stream), and the cancel and retry actions."""

from __future__ import annotations

from flask import Response, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from api.admin import actions
from api.admin.blueprint import bp
from api.admin.queries import (
    KINDS,
    STATUSES,
    JobFilters,
    active_counts,
    job_row,
    list_jobs,
    model_names,
    parse_page_size,
    timeline,
)
from api.admin.webhooks import deliveries
from api.job_events import events_response, last_event_id
from api.state import db_session, release_db_session
from api.tokenization import tokenizer_for
from shared.errors import InvalidRequest, NotFound
from shared.jobs import get_job
from shared.models import ModelRecord, WebhookMessage
from shared.states import TERMINAL

MAX_PIECES = 1024


def _page() -> dict[str, object]:
    filters = JobFilters.from_args(request.args)
    cursor = request.args.get("cursor") or None
    limit = request.args.get("limit")
    page = list_jobs(db_session(), filters, cursor, parse_page_size(limit))
    args = {**filters.args(), **({"limit": limit} if limit else {})}  # what links to other pages keep
    return {"filters": filters, "args": args, "cursor": cursor, "page": page, "rows": [job_row(j) for j in page.jobs]}


@bp.get("/")
def index() -> Response:
    return redirect(url_for("admin.jobs_page"))


@bp.get("/jobs")
def jobs_page() -> str:
    context = _page()
    session = db_session()
    return render_template(
        "admin/jobs.html",
        **context,
        counts=active_counts(session),
        models=model_names(session),
        statuses=STATUSES,
        kinds=KINDS,
    )


@bp.get("/jobs.json")
def jobs_json() -> Response:
    """The same page as data, for the table's poll: rows, their statuses, and the rendered table body."""
    context = _page()
    html = render_template("admin/_job_rows.html", rows=context["rows"], filters=context["filters"])
    rows = [{"id": r["id"], "status": r["status"]} for r in context["rows"]]  # type: ignore[attr-defined]
    return jsonify({"rows": rows, "html": html, "counts": active_counts(db_session())})


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    session = db_session()
    job = get_job(session, job_id)
    events, metrics = timeline(session, job.id)
    messages = deliveries(session, select(WebhookMessage).where(WebhookMessage.job_id == job.id))
    return render_template(
        "admin/job.html",
        job=job,
        row=job_row(job),
        events=events,
        metrics=metrics,
        deliveries=messages,
        live=job.status not in {s.value for s in TERMINAL},
    )


@bp.get("/jobs/<job_id>.json")
def job_json(job_id: str) -> Response:
    job = get_job(db_session(), job_id)
    return jsonify({"id": job.id, "status": job.status})


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    """The job's live events (status, drafts, canvases, done) as server-sent events, for the session's admin."""
    job = get_job(db_session(), job_id)
    release_db_session()  # the stream must not hold a database connection
    return events_response(job.id, last_event_id(), g.admin.tenant_id)


@bp.get("/models/<path:name>/pieces.json")
def token_pieces(name: str) -> Response:
    """The text of single tokens, so the live canvas can show each position settle."""
    record = db_session().get(ModelRecord, name)
    if record is None:
        raise NotFound(f"no model {name!r}", "name")
    raw = [p for p in (request.args.get("ids") or "").split(",") if p]
    tokenizer = tokenizer_for(record.path).tokenizer
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    valid = all(p.isascii() and p.isdigit() and len(p) < 10 and int(p) < vocab for p in raw)
    if len(raw) > MAX_PIECES or not valid:
        raise InvalidRequest(f"ids must be up to {MAX_PIECES} comma-separated token ids below {vocab}", "ids")
    return jsonify({p: tokenizer.decode([int(p)], skip_special_tokens=False) for p in raw})


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    session = db_session()
    actions.cancel(session, get_job(session, job_id))
    return redirect(url_for("admin.job_page", job_id=job_id))


@bp.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    session = db_session()
    copy = actions.retry(session, get_job(session, job_id))
    return redirect(url_for("admin.job_page", job_id=copy.id))
