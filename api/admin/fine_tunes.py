"""Fine-tunes: the list, and a page per fine-tune with its loss curve (and eval loss) that grows while it
trains, its checkpoints and its resulting model."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, render_template, request
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.admin.blueprint import bp
from api.admin.charts import Series, line_chart
from api.admin.queries import STATUSES, JobFilters, job_row, list_jobs, parse_page_size
from api.state import db_session
from shared.errors import NotFound
from shared.job_kinds import JobKind
from shared.models import Checkpoint, Job, JobEvent

MAX_POINTS = 800  # a chart needs no more; longer runs are thinned evenly (eval points are all kept)


def fine_tune(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.kind != JobKind.FINE_TUNE:
        raise NotFound(f"no fine-tune with id {job_id!r}", "id")
    return job


def metrics(session: Session, job_id: str) -> list[dict[str, Any]]:
    stmt = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics").order_by(JobEvent.id)
    return [d for d in session.scalars(stmt) if d]


def steps_done(session: Session, ids: list[str]) -> dict[str, int]:
    """Training steps recorded so far, per fine-tune."""
    if not ids:
        return {}
    stmt = (
        select(JobEvent.job_id, func.count())
        .where(JobEvent.job_id.in_(ids), JobEvent.type == "metrics")
        .group_by(JobEvent.job_id)
    )
    return {job_id: n for job_id, n in session.execute(stmt)}


def loss_chart(rows: list[dict[str, Any]]) -> Markup:
    stride = max(1, len(rows) // MAX_POINTS)
    kept = [r for i, r in enumerate(rows) if i % stride == 0 or i == len(rows) - 1]
    loss = [(r["step"], r["loss"]) for r in kept if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    series = [Series("train loss", loss, "loss")] + ([Series("eval loss", evals, "eval", dots=True)] if evals else [])
    return line_chart(series, "training loss per step", "step")


@bp.get("/fine-tunes")
def fine_tunes_page() -> str:
    session = db_session()
    filters = JobFilters(status=JobFilters.from_args(request.args).status, kind=JobKind.FINE_TUNE.value)
    cursor = request.args.get("cursor") or None
    page = list_jobs(session, filters, cursor, parse_page_size(request.args.get("limit")), (Job.params, Job.output))
    running = [j.id for j in page.jobs if j.status in ("running", "canceling")]
    return render_template(
        "admin/fine_tunes.html",
        page=page,
        rows=[(job, job_row(job)) for job in page.jobs],
        steps=steps_done(session, running),
        filters=filters,
        cursor=cursor,
        statuses=STATUSES,
    )


@bp.get("/fine-tunes/<job_id>")
def fine_tune_page(job_id: str) -> str:
    session = db_session()
    job = fine_tune(session, job_id)
    rows = metrics(session, job.id)
    checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step))
    return render_template(
        "admin/fine_tune.html",
        job=job,
        row=job_row(job),
        metrics=rows,
        chart=loss_chart(rows),
        checkpoints=list(checkpoints),
    )


@bp.get("/fine-tunes/<job_id>/metrics.json")
def fine_tune_metrics(job_id: str) -> Response:
    """The chart as it stands, for the page's poll while the fine-tune trains."""
    session = db_session()
    job = fine_tune(session, job_id)
    rows = metrics(session, job.id)
    last = rows[-1] if rows else {}
    return jsonify({"status": job.status, "steps": len(rows), "last": last, "svg": str(loss_chart(rows))})
