"""Dispatching due webhook messages (the sweeper's part) with a real webhook worker and receiver: one
tenant's backlog behind a failing receiver does not hold back another tenant's messages."""

from __future__ import annotations

from datetime import timedelta

from shared.db import session_scope
from shared.models import Job, WebhookEndpoint, WebhookMessage, utcnow
from shared.webhook_dispatch import sweep_webhooks
from shared.webhooks import new_secret
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import webhook_worker
from tests.e2e.receiver import Receiver

BACKLOG = 200  # as many as one sweep dispatches


def add_job_and_endpoint(session, tenant: str, url: str) -> tuple[str, str]:
    job_id, endpoint_id = f"job_{tenant}", f"we_{tenant}"
    session.add(Job(id=job_id, tenant_id=tenant, kind="generate", model=TINY, input={}, input_ids=[2], params={}))
    session.add(WebhookEndpoint(id=endpoint_id, tenant_id=tenant, url=url, events=["job.canvas"], secret=new_secret()))
    session.flush()
    return job_id, endpoint_id


def message(tenant: str, job_id: str, endpoint_id: str, url: str, n: int, at, **fields) -> WebhookMessage:
    values = {"status": "pending", "attempts": 0, "next_attempt_at": utcnow(), **fields}
    return WebhookMessage(
        id=f"msg_{tenant}_{n:04d}", tenant_id=tenant, job_id=job_id, endpoint_id=endpoint_id, url=url,
        event_type="job.canvas", payload={"type": "job.canvas", "data": {"n": n}}, created_at=at, **values,
    )  # fmt: skip


def test_a_tenants_backlog_behind_a_failing_receiver_does_not_hold_back_another_tenants_message(
    settings, backend
) -> None:
    settings = settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 3}")
    receiver = Receiver()
    start = utcnow() - timedelta(minutes=5)
    with session_scope(settings.database_url) as session:
        url_a, url_b = receiver.script("/a"), receiver.script("/b")
        job_a, we_a = add_job_and_endpoint(session, "a", url_a)
        job_b, we_b = add_job_and_endpoint(session, "b", url_b)
        # Tenant a: the first canvas got a 500 and waits for its retry; the canvases after it must wait too.
        retry_later = utcnow() + timedelta(hours=1)
        session.add(message("a", job_a, we_a, url_a, 0, start, attempts=1, next_attempt_at=retry_later))
        for n in range(1, BACKLOG + 1):
            session.add(message("a", job_a, we_a, url_a, n, start + timedelta(milliseconds=n)))
        # Tenant b: one due message, newer than all of a's.
        session.add(message("b", job_b, we_b, url_b, 0, start + timedelta(seconds=10)))
    try:
        with webhook_worker(settings) as worker:
            sent = [sweep_webhooks(settings, worker.app)[1] for _ in range(3)]
            [received] = receiver.wait_for("/b", 1, timeout=10)
        assert received.headers["webhook-id"] == "msg_b_0000"
        assert sent[0] == 1  # b's message only: a's are all behind its first
        assert receiver.at("/a") == []
        with session_scope(settings.database_url) as session:
            waiting = session.query(WebhookMessage).filter_by(tenant_id="a", status="pending").count()
        assert waiting == BACKLOG + 1  # nothing of a's was sent out of order or lost
    finally:
        receiver.close()


def test_of_two_sweepers_that_selected_one_due_message_only_one_sends_it(settings, backend) -> None:
    """Woken together, two sweepers may both select one due message (SQLite has no row locks to skip):
    the one that moves it first sends it, the other's conditional move finds it no longer due."""
    from shared.webhook_dispatch import _move_due

    settings = settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 3}")
    selected_at = utcnow()  # both sweepers' SELECT saw the message due at this moment
    with session_scope(settings.database_url) as session:
        job_id, endpoint_id = add_job_and_endpoint(session, f"race{backend}", "https://hooks.example/x")
        session.add(
            message(
                f"race{backend}",
                job_id,
                endpoint_id,
                "https://hooks.example/x",
                0,
                selected_at,
                next_attempt_at=selected_at,
            )
        )
    message_id = f"msg_race{backend}_0000"
    later = selected_at + timedelta(minutes=1)
    with session_scope(settings.database_url) as first:
        assert _move_due(first, message_id, selected_at, later)
    with session_scope(settings.database_url) as second:
        assert not _move_due(second, message_id, selected_at, later)
