"""The job lifecycle in the database: conditional transitions, claims, events, the reaper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.errors import IllegalTransition
from shared.jobs import (
    claim,
    create_job,
    expire_overdue,
    new_job_id,
    renew_lease,
    requeue,
    require_transition,
    timeline,
    transition,
)
from shared.models import Job, OutboxMessage, WebhookMessage, utcnow
from shared.states import JobStatus
from shared.sweeper import expired_leases, reap, reap_expired_leases
from tests.conftest import TINY


def make_job(settings, deadline_in: float | None = None, webhook: dict | None = None) -> str:
    job = Job(
        id=new_job_id(),
        tenant_id="t",
        kind="generate",
        model=TINY,
        input={"prompt": "x"},
        input_ids=[2, 3],
        params={"seed": 1},
        deadline_at=None if deadline_in is None else utcnow() + timedelta(seconds=deadline_in),
        webhook=webhook,
    )
    with session_scope(settings.database_url) as session:
        create_job(session, job)
    return job.id


def test_a_job_is_claimed_once(settings) -> None:
    job_id = make_job(settings)
    with session_scope(settings.database_url) as session:
        assert claim(session, job_id, "w1", 30) == 1
    with session_scope(settings.database_url) as session:
        assert claim(session, job_id, "w2", 30) is None  # duplicate delivery: no-op
        job = session.get(Job, job_id)
        assert (job.status, job.worker, job.attempts) == ("running", "w1", 1)
        assert [e.status for e in timeline(session, job_id)] == ["queued", "running"]


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ([], JobStatus.SUCCEEDED),  # queued cannot succeed without running
        ([JobStatus.CANCELED], JobStatus.RUNNING),  # a canceled job never starts
        ([JobStatus.RUNNING, JobStatus.SUCCEEDED], JobStatus.FAILED),  # terminal stays terminal
        ([JobStatus.RUNNING, JobStatus.SUCCEEDED], JobStatus.CANCELING),
    ],
)
def test_illegal_transitions_are_refused(settings, path, refused) -> None:
    job_id = make_job(settings)
    with session_scope(settings.database_url) as session:
        for status in path:
            require_transition(session, job_id, status)
    with session_scope(settings.database_url) as session, pytest.raises(IllegalTransition):
        require_transition(session, job_id, refused)
    with session_scope(settings.database_url) as session:
        assert len(timeline(session, job_id)) == 1 + len(path)


def test_a_stale_attempt_cannot_finish_a_job(settings) -> None:
    job_id = make_job(settings)
    with session_scope(settings.database_url) as session:
        assert claim(session, job_id, "w1", 30) == 1
        assert not transition(session, job_id, JobStatus.SUCCEEDED, attempt=2)
        assert transition(session, job_id, JobStatus.SUCCEEDED, attempt=1)


def test_the_reaper_requeues_then_fails_a_job_whose_lease_expired(settings) -> None:
    settings = settings.with_(max_attempts=2)
    job_id = make_job(settings)
    for attempt in (1, 2):
        with session_scope(settings.database_url) as session:
            assert claim(session, job_id, f"w{attempt}", 30) == attempt
            session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        assert reap_expired_leases(settings) == 1
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "failed"
        assert job.error["type"] == "worker_lost"
        statuses = [e.status for e in timeline(session, job_id)]
        assert statuses == ["queued", "running", "queued", "running", "failed"]
        # the requeue wrote a second outbox message, so the job is published again
        assert session.query(OutboxMessage).filter_by(job_id=job_id).count() == 2


def test_a_live_lease_is_not_reaped(settings) -> None:
    job_id = make_job(settings)
    with session_scope(settings.database_url) as session:
        claim(session, job_id, "w1", 30)
    assert reap_expired_leases(settings) == 0


def test_a_job_past_its_deadline_is_never_started_it_expires(settings) -> None:
    hook = {"url": "https://hooks.example/expired", "events": ["job.expired"]}
    late, on_time = make_job(settings, deadline_in=-1, webhook=hook), make_job(settings, deadline_in=3600)
    with session_scope(settings.database_url) as session:
        assert claim(session, late, "w1", 30) is None
        assert claim(session, on_time, "w1", 30) == 1
    with session_scope(settings.database_url) as session:
        job = session.get(Job, late)
        assert (job.status, job.attempts, job.started_at) == ("expired", 0, None)
        assert job.error["type"] == "expired" and "deadline" in job.error["message"]
        assert [e.status for e in timeline(session, late)] == ["queued", "expired"]
        assert session.get(Job, on_time).status == "running"
        messages = session.scalars(select(WebhookMessage).where(WebhookMessage.job_id == late)).all()
        assert [(m.event_type, m.payload["data"]["status"]) for m in messages] == [("job.expired", "expired")]


def test_the_sweeper_expires_overdue_queued_jobs_only(settings) -> None:
    overdue, later, running = make_job(settings, -1), make_job(settings, 3600), make_job(settings, 3600)
    with session_scope(settings.database_url) as session:
        claim(session, running, "w1", 30)
        session.get(Job, running).deadline_at = utcnow() - timedelta(seconds=1)  # started in time, then overdue
    with session_scope(settings.database_url) as session:
        assert expire_overdue(session) == 1
    with session_scope(settings.database_url) as session:
        statuses = [session.get(Job, j).status for j in (overdue, later, running)]
    assert statuses == ["expired", "queued", "running"]


def test_a_job_requeued_after_a_lost_worker_is_not_expired_by_its_deadline(settings) -> None:
    job_id = make_job(settings, deadline_in=3600)
    with session_scope(settings.database_url) as session:
        assert claim(session, job_id, "w1", 30) == 1
        job = session.get(Job, job_id)
        job.lease_expires_at = utcnow() - timedelta(seconds=1)  # the worker died
        job.deadline_at = utcnow() - timedelta(seconds=1)  # and the deadline passed meanwhile
    assert reap_expired_leases(settings) == 1
    with session_scope(settings.database_url) as session:
        assert expire_overdue(session) == 0  # it started in time: the accepted work is finished
        assert claim(session, job_id, "w2", 30) == 2


def test_a_job_a_worker_gives_back_keeps_its_attempt_and_its_start(settings) -> None:
    """A worker's shutdown requeues its running job without spending an attempt; the job started in time,
    so its deadline passing meanwhile does not expire it."""
    job_id = make_job(settings, deadline_in=3600)
    with session_scope(settings.database_url) as session:
        assert claim(session, job_id, "w1", 30) == 1
        session.get(Job, job_id).deadline_at = utcnow() - timedelta(seconds=1)
    with session_scope(settings.database_url) as session:
        assert requeue(session, job_id, 1, {"reason": "worker shutting down"}, spend_attempt=False)
    with session_scope(settings.database_url) as session:
        assert not requeue(session, job_id, 1, {}, spend_attempt=False)  # a second give-back changes nothing
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.worker, job.lease_expires_at) == ("queued", 0, None, None)
        outbox = session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id)).all()
        assert len(outbox) == 2  # the first delivery's, and the one that delivers it again
        assert expire_overdue(session) == 0
        assert claim(session, job_id, "w2", 30) == 1
        assert [e.status for e in timeline(session, job_id)] == ["queued", "running", "queued", "running"]


def test_the_reaper_leaves_a_lease_renewed_after_it_looked(settings) -> None:
    """The reaper reads the expired leases, then the worker renews one, then the reaper acts on what it
    read: the renewed lease is not requeued (its UPDATE re-checks the lease)."""
    job_id = make_job(settings)
    with session_scope(settings.database_url) as session:
        assert claim(session, job_id, "w1", 30) == 1
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope(settings.database_url) as reaper:
        [seen] = expired_leases(reaper)
        with session_scope(settings.database_url) as worker:
            assert renew_lease(worker, job_id, 1, 30)
        assert not reap(reaper, settings, seen)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.worker) == ("running", 1, "w1")
        assert [e.status for e in timeline(session, job_id)] == ["queued", "running"]
