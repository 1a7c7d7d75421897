"""Reads behind the dashboard's pages. Every list is bounded and walks an index (migration 0004), so a page
costs the same with a hundred jobs or a hundred thousand."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, load_only

from api.pagination import decode_cursor, encode_cursor, parse_limit
from shared.errors import InvalidRequest
from shared.job_kinds import JobKind
from shared.models import Job, JobEvent, ModelRecord, utcnow
from shared.states import JobStatus

PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
STATUSES = tuple(s.value for s in JobStatus)
KINDS = tuple(k.value for k in JobKind)
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.CANCELING.value)
LIST_COLUMNS = (
    Job.id,
    Job.tenant_id,
    Job.kind,
    Job.model,
    Job.status,
    Job.stats,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
)


@dataclass(frozen=True)
class JobFilters:
    """The jobs table's filters; empty fields do not filter. `q` (a job id) overrides the others."""

    status: str = ""
    model: str = ""
    kind: str = ""
    tenant: str = ""
    q: str = ""

    @classmethod
    def from_args(cls, args: Any) -> JobFilters:
        filters = cls(**{k: (args.get(k) or "").strip() for k in ("status", "model", "kind", "tenant", "q")})
        if filters.status and filters.status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", "status")
        return filters

    def conditions(self) -> list[Any]:
        if self.q:
            return [Job.id == self.q]
        columns = {"status": Job.status, "model": Job.model, "kind": Job.kind, "tenant": Job.tenant_id}
        return [columns[name] == value for name, value in asdict(self).items() if value and name in columns]

    def args(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


def parse_page_size(value: str | None) -> int:
    """The table's `limit` argument: ASCII digits only ('²' passes str.isdigit but not int)."""
    return parse_limit(value, PAGE_SIZE, MAX_PAGE_SIZE)


def list_jobs(
    session: Session, filters: JobFilters, cursor: str | None, limit: int = PAGE_SIZE, extra: tuple[Any, ...] = ()
) -> JobPage:
    """Every tenant's jobs, newest first, one keyset page after `cursor` (created_at, id). Only the listed
    columns (and `extra`) are loaded: never the prompts and outputs."""
    stmt = select(Job).options(load_only(*LIST_COLUMNS, *extra)).where(*filters.conditions())
    if cursor:
        created, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < row_id)))
    rows = list(session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    more = len(rows) > limit
    return JobPage(page, encode_cursor(page[-1].created_at, page[-1].id) if more else None)


def active_counts(session: Session) -> dict[str, int]:
    """How many jobs are queued, running and canceling (small index ranges, whatever the table's size)."""
    stmt = select(Job.status, func.count()).where(Job.status.in_(ACTIVE)).group_by(Job.status)
    counts = dict.fromkeys(ACTIVE, 0)
    counts.update({status: n for status, n in session.execute(stmt)})
    return counts


def model_names(session: Session) -> list[str]:
    return list(session.scalars(select(ModelRecord.name).order_by(ModelRecord.name).limit(500)))


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() * 1000 if start and end else None


def job_row(job: Job, now: datetime | None = None) -> dict[str, Any]:
    """What one row of the jobs table shows; waits and run times of unfinished jobs count up to now."""
    now = now or utcnow()
    queued = job.status == JobStatus.QUEUED.value
    running = job.status in (JobStatus.RUNNING.value, JobStatus.CANCELING.value)
    stats = job.stats or {}
    run_ms = _ms(job.started_at, job.finished_at or (now if running else None))
    tokens = stats.get("output_tokens")
    return {
        "id": job.id,
        "status": job.status,
        "kind": job.kind,
        "model": job.model,
        "tenant": job.tenant_id,
        "created_at": job.created_at,
        "queue_ms": _ms(job.created_at, job.started_at or (now if queued else None)),
        "run_ms": run_ms,
        "tokens_per_s": tokens / (stats["run_ms"] / 1000) if tokens and stats.get("run_ms") else None,
    }


def timeline(session: Session, job_id: str) -> tuple[list[JobEvent], int]:
    """The job's events except training metrics (shown as a chart), and how many metrics there are."""
    events = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type != "metrics").order_by(JobEvent.id)
    metrics = select(func.count()).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
    return list(session.scalars(events.limit(500))), session.scalar(metrics) or 0


Finished = tuple[datetime, str, str | None, dict[str, Any] | None]  # finished_at, status, worker, stats


def finished_since(session: Session, minutes: int) -> list[Finished]:
    """(finished_at, status, worker, stats) of the jobs that finished in the last `minutes`."""
    since = utcnow() - timedelta(minutes=minutes)
    stmt = select(Job.finished_at, Job.status, Job.worker, Job.stats).where(Job.finished_at >= since)
    return [tuple(row) for row in session.execute(stmt)]  # type: ignore[misc]
