"""Public JSON views of rows (the API's responses and the webhooks' payloads)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.models import Job, JobEvent


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_view(job: Job, events: list[JobEvent] | None = None) -> dict[str, Any]:
    """The public JSON shape of a job (the API's and, later, the webhooks')."""
    view: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "model": job.model,
        "status": job.status,
        "input": job.input,
        "params": job.params,
        "output": job.output,
        "stats": job.stats,
        "error": job.error,
        "attempts": job.attempts,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "deadline_at": iso(job.deadline_at),
        "priority": job.priority,
        "lane": job.lane,
    }
    if events is not None:
        view["timeline"] = [
            {"status": e.status, "type": e.type, "at": iso(e.created_at), **({"data": e.data} if e.data else {})}
            for e in events
        ]
    return view
