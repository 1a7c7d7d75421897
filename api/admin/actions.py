"""What an operator may do to a job from the dashboard: cancel it, or run it again as a new job.

Both go through shared/jobs.py (conditional transitions, the outbox), like the public API; an admin acts
on any tenant's job.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.state import publish_after_commit, publish_status
from shared.errors import Conflict
from shared.jobs import create_job, new_job_id, request_cancel
from shared.models import Job, JobEvent, utcnow
from shared.states import TERMINAL, JobStatus


def cancel(session: Session, job: Job) -> None:
    """A queued job is canceled at once; a running one becomes `canceling` until its worker stops it."""
    if request_cancel(session, job):
        publish_status(job.id, job.status)


def retry(session: Session, job: Job) -> Job:
    """A new job with the same tenant, model, input and parameters (seed included); both timelines say so."""
    if job.status not in {s.value for s in TERMINAL}:
        raise Conflict(f"job {job.id} is {job.status}; only a finished job can be retried", "id")
    copy = Job(
        id=new_job_id(job.kind),
        tenant_id=job.tenant_id,
        kind=job.kind,
        model=job.model,
        input=job.input,
        input_ids=job.input_ids,
        params=job.params,
        webhook=job.webhook,
        priority=job.priority,
    )
    outbox = create_job(session, copy)
    session.add(JobEvent(job_id=copy.id, type="retry_of", data={"job_id": job.id}, created_at=utcnow()))
    session.add(JobEvent(job_id=job.id, type="retried", data={"job_id": copy.id}, created_at=utcnow()))
    session.commit()
    publish_status(copy.id, JobStatus.QUEUED.value)
    publish_after_commit(outbox.queue)
    return copy
