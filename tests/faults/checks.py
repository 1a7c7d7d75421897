"""The promise every fault test checks, read from the database and the receiver."""

from __future__ import annotations

import time
from collections import Counter

from sqlalchemy import select

from shared.db import session_scope
from shared.models import Job, JobEvent, WebhookMessage
from shared.states import TERMINAL
from tests.e2e.receiver import Receiver

TERMINAL_VALUES = {s.value for s in TERMINAL}
FIGURES: list[str] = []  # printed in pytest's summary by tests/faults/conftest.py


def report(line: str) -> None:
    """A figure of this run (answers, attempts, times) for the summary: docs/reliability.md quotes them
    with the command that printed them."""
    FIGURES.append(line)


def assert_each_ended_once_with_its_output(database_url: str, job_ids: list[str]) -> None:
    """Each job succeeded with an output, and its timeline ends once (one terminal event)."""
    with session_scope(database_url) as session:
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
        ends = Counter(
            session.scalars(
                select(JobEvent.job_id).where(
                    JobEvent.job_id.in_(job_ids), JobEvent.type == "status", JobEvent.status.in_(TERMINAL_VALUES)
                )
            )
        )
    assert set(jobs) == set(job_ids), "an accepted job is missing"
    not_done = {i: (j.status, j.error) for i, j in jobs.items() if j.status != "succeeded" or not j.output}
    assert not not_done, not_done
    assert all(ends[i] == 1 for i in job_ids), {i: ends[i] for i in job_ids if ends[i] != 1}


def wait_for_webhooks_to_settle(database_url: str, job_ids: list[str], timeout: float = 30.0) -> None:
    """Wait, while the stack still runs, until no message of these jobs is pending or delivering: a delivery
    whose result write met an outage is redone only after its lease ends (the receiver may already have
    counted it). Returns at the deadline either way; the assertions judge what is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(database_url) as session:
            unsettled = session.scalar(
                select(WebhookMessage.id)
                .where(WebhookMessage.job_id.in_(job_ids), WebhookMessage.status.in_(("pending", "delivering")))
                .limit(1)
            )
        if unsettled is None:
            return
        time.sleep(0.3)


def assert_no_webhook_lost_or_doubled(database_url: str, job_ids: list[str], receiver: Receiver, path: str) -> None:
    """One message per (job, event, destination), each delivered, the receiver got each of them, and no
    request came under an id the database does not know (a second id for one event). Call
    wait_for_webhooks_to_settle first, before the stack stops."""
    with session_scope(database_url) as session:
        messages = list(session.scalars(select(WebhookMessage).where(WebhookMessage.job_id.in_(job_ids))))
        rows = [(m.id, m.job_id, m.event_type, m.endpoint_id or m.url, m.status) for m in messages]
    per_event = Counter((job, event, destination) for _id, job, event, destination, _status in rows)
    assert all(n == 1 for n in per_event.values()), [k for k, n in per_event.items() if n > 1]
    assert {job for _id, job, *_ in rows} == set(job_ids), "a job has no webhook message"
    undelivered = [(i, s) for i, *_rest, s in rows if s != "delivered"]
    assert not undelivered, undelivered
    received = {r.headers["webhook-id"] for r in receiver.at(path)}
    ids = {i for i, *_ in rows}
    assert ids <= received, f"lost: {ids - received}"
    assert received <= ids, f"delivered under ids the database does not know: {received - ids}"


def outcome_figures(database_url: str, job_ids: list[str]) -> str:
    """Jobs by attempts, and the longest time from acceptance to end: for the test's report line."""
    with session_scope(database_url) as session:
        rows = session.execute(select(Job.attempts, Job.created_at, Job.finished_at).where(Job.id.in_(job_ids))).all()
    attempts = dict(sorted(Counter(a for a, _c, _f in rows).items()))
    slowest = max((f - c).total_seconds() for _a, c, f in rows)
    return f"{len(rows)} jobs, by attempts {attempts}, slowest ended {slowest:.1f} s after it was accepted"
