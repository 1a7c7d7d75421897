"""Retention on real SQLite and PostgreSQL: old finished rows go in bounded batches, nothing live does."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from shared.db import session_scope
from shared.jobs import create_job, new_job_id
from shared.models import (
    Checkpoint,
    Job,
    JobEvent,
    ModelRecord,
    OutboxMessage,
    WebhookAttempt,
    WebhookMessage,
    utcnow,
)
from shared.retention import apply_if_due, apply_retention
from shared.settings import Settings
from tests.conftest import TINY

OLD = timedelta(days=40)


def make_job(settings: Settings, status: str = "succeeded", age: timedelta = OLD, **extra: object) -> str:
    """A job created and (unless queued or running) finished `age` ago, with a metrics event per step,
    an outbox row, a delivered webhook message with two attempts, and a checkpoint row."""
    when = utcnow() - age
    with session_scope(settings.database_url) as session:
        job = Job(
            id=new_job_id(), tenant_id="t", kind="generate", model=TINY, input={}, input_ids=[1], params={},
            created_at=when, **extra,
        )  # fmt: skip
        outbox = create_job(session, job)
        outbox.published_at = when
        job.status = status
        job.finished_at = when if status in ("succeeded", "failed", "canceled", "expired") else None
        for step in range(5):
            session.add(JobEvent(job_id=job.id, type="metrics", data={"step": step}, created_at=when))
        message = WebhookMessage(
            id=f"msg_{job.id}", tenant_id="t", job_id=job.id, url="https://example.com/hook",
            event_type="job.succeeded", payload={}, status="delivered", created_at=when,
        )  # fmt: skip
        session.add(message)
        session.flush()
        session.add_all(WebhookAttempt(message_id=message.id, attempt=i, created_at=when) for i in (1, 2))
        session.add(Checkpoint(job_id=job.id, step=10, path="/nowhere/step_10.pt", created_at=when))
        return job.id


def count(settings: Settings, table: type, *where: object) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(table).where(*where))


def test_old_finished_jobs_go_with_all_their_rows_and_live_ones_stay(settings: Settings) -> None:
    old = make_job(settings)
    recent = make_job(settings, age=timedelta(days=1))
    running = make_job(settings, status="running")
    purged = apply_retention(settings)
    assert purged.jobs == 1
    assert count(settings, Job, Job.id == old) == 0
    for table in (JobEvent, OutboxMessage, WebhookMessage, Checkpoint):
        assert count(settings, table, table.job_id == old) == 0, table
    assert count(settings, WebhookAttempt, WebhookAttempt.message_id == f"msg_{old}") == 0
    assert count(settings, Job, Job.id.in_([recent, running])) == 2
    assert count(settings, JobEvent, JobEvent.job_id == running) == 6  # its timeline and metrics untouched


def test_a_fine_tune_whose_model_is_registered_stays(settings: Settings) -> None:
    kept = make_job(settings)
    with session_scope(settings.database_url) as session:
        base = session.get(ModelRecord, TINY)
        name = f"{TINY}:ft-{kept}"
        session.add(
            ModelRecord(
                name=name, path=base.path, canvas_length=base.canvas_length, max_positions=base.max_positions,
                vocab_size=base.vocab_size, eos_token_ids=base.eos_token_ids, pad_token_id=base.pad_token_id,
                base_model=TINY, adapter_path="/nowhere", fine_tune_job_id=kept,
            )
        )  # fmt: skip
    try:
        apply_retention(settings)
        assert count(settings, Job, Job.id == kept) == 1
    finally:
        with session_scope(settings.database_url) as session:
            session.delete(session.get(ModelRecord, name))


def test_a_job_with_a_message_still_to_deliver_stays(settings: Settings) -> None:
    job_id = make_job(settings)
    with session_scope(settings.database_url) as session:
        session.get(WebhookMessage, f"msg_{job_id}").status = "pending"
    apply_retention(settings)
    assert count(settings, Job, Job.id == job_id) == 1


def test_each_call_deletes_at_most_one_batch_per_table(settings: Settings) -> None:
    jobs = [make_job(settings) for _ in range(3)]
    small = settings.with_(retention_batch_rows=4)  # fewer than one job's 6 events
    first = apply_retention(small)
    assert first.events == 4 and first.jobs == 0 and first.webhook_attempts == 4
    assert count(settings, Job, Job.id.in_(jobs)) == 3
    rounds = 1
    while count(settings, Job, Job.id.in_(jobs)):
        purged = apply_retention(small)
        assert max(purged.events, purged.webhook_attempts, purged.jobs) <= 4
        rounds += 1
        assert rounds < 20
    assert count(settings, JobEvent, JobEvent.job_id.in_(jobs)) == 0


def test_outbox_webhook_messages_and_idempotency_keys_expire(settings: Settings) -> None:
    queued = make_job(settings, status="queued", age=timedelta(days=2), idempotency_key="k1", request_hash="h")
    done = make_job(settings, age=timedelta(days=2), idempotency_key="k2", request_hash="h")
    fresh = make_job(settings, age=timedelta(hours=1), idempotency_key="k3", request_hash="h")
    with session_scope(settings.database_url) as session:  # a message older than its job's retention
        session.get(WebhookMessage, f"msg_{done}").created_at = utcnow() - OLD
    purged = apply_retention(settings)
    assert purged.jobs == 0
    assert count(settings, OutboxMessage, OutboxMessage.job_id == done) == 0  # published, job finished
    assert count(settings, OutboxMessage, OutboxMessage.job_id == queued) == 1  # its job is still queued
    assert count(settings, WebhookMessage, WebhookMessage.id == f"msg_{done}") == 0
    assert count(settings, WebhookMessage, WebhookMessage.id == f"msg_{fresh}") == 1
    with session_scope(settings.database_url) as session:
        keys = dict(session.execute(select(Job.id, Job.idempotency_key).where(Job.id.in_([queued, done, fresh]))).all())
    assert keys == {queued: None, done: None, fresh: "k3"}


def test_zero_keeps_forever_and_the_sweeper_hook_runs_once_per_interval(settings: Settings) -> None:
    old = make_job(settings)
    forever = settings.with_(
        retention_job_days=0, retention_webhook_days=0, retention_outbox_hours=0, retention_idempotency_hours=0
    )
    assert apply_retention(forever).total() == 0
    assert count(settings, Job, Job.id == old) == 1
    assert apply_if_due(settings.with_(retention_interval_seconds=0)) is not None
    assert count(settings, Job, Job.id == old) == 0
    make_job(settings)
    assert apply_if_due(settings.with_(retention_interval_seconds=3600)) is None  # ran a moment ago
