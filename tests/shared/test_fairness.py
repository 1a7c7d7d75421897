"""Fair release (shared/fairness.py): jobs wait in SQL and go to the broker round-robin across tenants, under
a per-tenant cap and a per-queue depth, a tenant's priorities first, batch below interactive. Real SQL and
a real Redis broker (this backend's database on the tests' server)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select

from shared.contracts import generation_queue
from shared.db import session_scope
from shared.fairness import BROKER_BACKOFF, QueueState, plan_releases, release, release_all, release_soon
from shared.jobs import claim, create_job, new_job_id, transition
from shared.models import Job, OutboxMessage
from shared.queue import producer
from shared.states import JobStatus, Lane
from tests.conftest import TINY, auth

QUEUE = generation_queue(TINY)
T0 = datetime(2026, 1, 1)


@pytest.fixture
def broker(settings):
    """The backend's Redis database, emptied before and after: the released messages land there."""
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    yield client
    client.flushdb()


def add_jobs(settings, tenant: str, count: int, *, lane: str = "interactive", priority: int = 0) -> list[str]:
    ids = []
    with session_scope(settings.database_url) as session:
        for _ in range(count):
            job = Job(
                id=new_job_id(), tenant_id=tenant, kind="generate", model=TINY, input={"prompt": "x"},
                input_ids=[2, 3], params={"seed": 1}, lane=lane, priority=priority,
            )  # fmt: skip
            create_job(session, job)
            ids.append(job.id)
    return ids


def released(settings, ids: list[str] | None = None) -> list[str]:
    """Released jobs, in release order."""
    with session_scope(settings.database_url) as session:
        stmt = select(Job.id).where(Job.released_at.is_not(None)).order_by(Job.released_at, Job.id)
        rows = list(session.scalars(stmt))
    return [i for i in rows if ids is None or i in ids]


def release_pass(settings) -> int:
    with session_scope(settings.database_url) as session:
        return release(session, producer(settings), settings, QUEUE)


def state(**waiting: int) -> QueueState:
    s = QueueState()
    for key, n in waiting.items():
        tenant, lane = key.split("_")
        s.waiting[(tenant, lane)] = n
        s.oldest[(tenant, lane)] = T0 + timedelta(seconds=len(s.oldest))
    return s


def test_free_slots_go_round_robin_to_the_tenant_with_fewest_in_flight() -> None:
    s = state(a_interactive=100, b_interactive=1, c_interactive=3)
    s.in_flight["a"] = 10
    plan = plan_releases(s, depth=5, cap=0)
    # b and c have nothing in flight: they get the slots before a, which already has 10 running
    assert plan[-1] == ("a", "interactive")
    assert Counter(plan) == Counter({("c", "interactive"): 3, ("b", "interactive"): 1, ("a", "interactive"): 1})


def test_the_depth_counts_released_jobs_not_yet_claimed_and_the_cap_counts_a_tenants_in_flight() -> None:
    s = state(a_interactive=100)
    s.unclaimed = 3
    assert Counter(plan_releases(s, depth=4, cap=0)) == Counter({("a", "interactive"): 1})
    s.unclaimed, s.in_flight["a"] = 0, 31
    assert Counter(plan_releases(s, depth=4, cap=32)) == Counter({("a", "interactive"): 1})
    s.in_flight["a"] = 32
    assert Counter(plan_releases(s, depth=4, cap=32)) == Counter()


def test_batch_waits_for_interactive_but_always_keeps_one_job_in_flight() -> None:
    s = state(a_batch=50, b_interactive=10)
    assert Counter(plan_releases(s, depth=4, cap=0)) == Counter({("a", "batch"): 1, ("b", "interactive"): 3})
    s.batch_in_flight = 1  # the batch lane is moving: interactive work takes every free slot
    assert Counter(plan_releases(s, depth=4, cap=0)) == Counter({("b", "interactive"): 4})
    s.waiting[("b", "interactive")] = 0  # nothing interactive waits: batch takes the idle capacity
    assert Counter(plan_releases(s, depth=4, cap=0)) == Counter({("a", "batch"): 4})


def test_a_release_pass_sends_the_fair_share_to_the_broker(settings, broker) -> None:
    settings = settings.with_(release_depth=4, tenant_in_flight=3)
    a_jobs = add_jobs(settings, "ten_a", 20)
    assert release_pass(settings) == 3  # a alone: capped at 3 in flight
    b_job = add_jobs(settings, "ten_b", 1)
    assert release_pass(settings) == 1  # b gets the one free slot of the depth at once
    assert released(settings) == [*a_jobs[:3], *b_job]
    assert broker.llen(QUEUE) == 4  # the messages are in the broker's queue
    with session_scope(settings.database_url) as session:  # a worker claims two of a's: depth frees, cap not
        for job_id in a_jobs[:2]:
            claim(session, job_id, "w", 30)
    assert release_pass(settings) == 0
    with session_scope(settings.database_url) as session:  # one finishes: a has room for one more
        transition(session, a_jobs[0], JobStatus.SUCCEEDED, attempt=1)
    assert release_pass(settings) == 1
    assert released(settings)[-1] == a_jobs[3]


def test_a_tenants_priority_orders_its_own_jobs_only(settings, broker) -> None:
    settings = settings.with_(release_depth=3, tenant_in_flight=0)
    low = add_jobs(settings, "ten_a", 2, priority=-5)
    high = add_jobs(settings, "ten_a", 1, priority=7)
    other = add_jobs(settings, "ten_b", 1)
    assert release_all(settings, producer(settings)) == 3
    # a's oldest job waited longest, so a goes first, with its highest priority; then b; then a's next
    assert released(settings) == [high[0], other[0], low[0]]


def test_batch_jobs_go_after_interactive_ones_with_one_always_moving(settings, broker) -> None:
    settings = settings.with_(release_depth=3, tenant_in_flight=0)
    batch = add_jobs(settings, "ten_a", 5, lane=Lane.BATCH.value)
    interactive = add_jobs(settings, "ten_b", 5)
    assert release_pass(settings) == 3
    assert Counter(j in batch for j in released(settings)) == Counter({False: 2, True: 1})
    assert set(released(settings)) - set(batch) <= set(interactive)


def test_a_broker_failure_leaves_jobs_waiting(settings) -> None:
    settings = settings.with_(redis_url="redis://127.0.0.1:1/0", publish_timeout_seconds=0.2)
    add_jobs(settings, "ten_a", 2)
    assert release_pass(settings) == 0
    assert released(settings) == []
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Job.status)) == JobStatus.QUEUED.value


def test_submission_releases_at_once_when_there_is_room(settings, keys, client, broker) -> None:
    response = client.post("/v1/jobs", json={"model": TINY, "prompt": "hi", "priority": 3}, headers=auth(keys["a"]))
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert (job["priority"], job["lane"]) == (3, "interactive")
    assert released(settings) == [job["id"]]
    assert broker.llen(QUEUE) == 1
    for bad in (11, -11, "high", 2.5):
        response = client.post(
            "/v1/jobs", json={"model": TINY, "prompt": "hi", "priority": bad}, headers=auth(keys["a"])
        )
        assert response.status_code == 422 and response.get_json()["error"]["param"] == "priority"


@pytest.fixture
def silent_broker():
    """A TCP server that accepts connections and never answers (a Redis paused for a failover, a proxy whose
    backend is gone): its redis:// URL."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()
    for conn in accepted:
        conn.close()


def test_a_broker_that_never_answers_does_not_hold_the_release_pass(settings, silent_broker) -> None:
    settings = settings.with_(redis_url=silent_broker, publish_timeout_seconds=0.5)
    ids = add_jobs(settings, "ten_a", 2)
    sent: list[int] = []
    worker = threading.Thread(target=lambda: sent.append(release_pass(settings)), daemon=True)
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "the release pass (and its per-queue lock) hangs on a silent broker"
    assert sent == [0] and released(settings, ids) == []
    with session_scope(settings.database_url) as session:
        errors = session.scalars(select(OutboxMessage.last_error).where(OutboxMessage.job_id.in_(ids))).all()
    assert any(errors), errors


def test_a_refusing_broker_pauses_best_effort_passes_instead_of_queueing_them(settings, silent_broker) -> None:
    """A broker that refuses slowly: each try waits out publish_timeout_seconds holding the queue's lock.
    Four submissions' passes at once: the first pays that once and pauses the broker's best-effort passes,
    the others, waiting on the lock behind it, return at once instead of each waiting out its own try; the
    sweeper's pass still tries while paused."""
    down = settings.with_(redis_url=silent_broker, publish_timeout_seconds=1.0, sweep_seconds=60)
    ids = add_jobs(settings, "ten_a", 4)
    app = producer(down)
    sent: list[int] = []
    threads = [threading.Thread(target=lambda: sent.append(release_soon(down, app, QUEUE))) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    took = time.monotonic() - started
    assert sent == [0, 0, 0, 0] and released(settings, ids) == []
    assert BROKER_BACKOFF.paused(silent_broker)
    assert 0.9 < took < 3.0, f"{took:.2f} s: the passes waited out a try each (over 4 s) or none tried"
    started = time.monotonic()
    assert release_soon(down, app, QUEUE) == 0 and time.monotonic() - started < 0.5  # no try: it is paused
    started = time.monotonic()
    assert release_all(down, app) == 0 and time.monotonic() - started > 0.9  # the sweeper's pass: a try


def test_a_sweeper_pass_that_gets_through_ends_the_pause(settings, broker) -> None:
    ids = add_jobs(settings, "ten_a", 2)
    app = producer(settings)
    BROKER_BACKOFF.pause(settings.redis_url, 60)  # as a refused release leaves it
    assert release_soon(settings, app, QUEUE) == 0 and released(settings, ids) == []
    assert release_all(settings, app) == 2 and not BROKER_BACKOFF.paused(settings.redis_url)
    more = add_jobs(settings, "ten_b", 1)
    assert release_soon(settings, app, QUEUE) == 1 and released(settings, more) == more


def expected_releases(settings, session) -> list[str]:
    """The next pass's releases by the rules, worked out in Python over every row of the queue (the full
    counts and oldest times a pass once read with a GROUP BY over the backlog): the oracle for the pass's
    reads, which now stop at one index entry per tenant and lane and at the free slots."""
    s, waiting = QueueState(), {}
    for job in session.scalars(select(Job).where(Job.queue == QUEUE, Job.status.in_(("queued", "running")))):
        key = (job.tenant_id, job.lane)
        if job.released_at is not None:
            s.in_flight[job.tenant_id] += 1
            s.batch_in_flight += job.lane == Lane.BATCH.value
            s.unclaimed += job.status == "queued"
        else:
            waiting.setdefault(key, []).append(job)
            s.waiting[key] += 1
            s.oldest[key] = min(s.oldest.get(key, job.created_at), job.created_at)
    for jobs in waiting.values():
        jobs.sort(key=lambda job: (-job.priority, job.created_at, job.id))
    plan = plan_releases(s, settings.release_depth, settings.tenant_in_flight, settings.batch_max_in_flight)
    picked = {key: iter(jobs) for key, jobs in waiting.items()}
    return [next(picked[key]).id for key in plan]


def test_the_release_order_over_many_tenants_and_lanes_is_the_rules_order(settings, broker) -> None:
    settings = settings.with_(release_depth=5, tenant_in_flight=3, batch_max_in_flight=2)
    rng = random.Random(20)
    ages = rng.sample(range(600), 300)  # created out of insertion order: the oldest is not the first added
    with session_scope(settings.database_url) as session:
        for age in ages:
            lane = rng.choice([Lane.INTERACTIVE.value, Lane.INTERACTIVE.value, Lane.BATCH.value])
            job = Job(
                id=new_job_id(), tenant_id=f"ten_{rng.randrange(14):02d}", kind="generate", model=TINY,
                input={"prompt": "x"}, input_ids=[2, 3], params={"seed": 1}, lane=lane,
                priority=rng.randrange(-2, 3), created_at=T0.replace(tzinfo=UTC) + timedelta(seconds=age),
            )  # fmt: skip
            create_job(session, job)
    done: list[str] = []
    for _ in range(40):
        with session_scope(settings.database_url) as session:
            expected = expected_releases(settings, session)
        before = released(settings)
        release_pass(settings)
        assert released(settings)[len(before) :] == expected
        with session_scope(settings.database_url) as session:  # workers take the released, finish some
            running = session.scalars(select(Job.id).where(Job.status == "running").order_by(Job.id)).all()
            for job_id in rng.sample(running, min(len(running), rng.randrange(1, 5))):
                transition(session, job_id, JobStatus.SUCCEEDED, attempt=1)
                done.append(job_id)
            for job_id in released(settings):
                if job_id not in done and rng.random() < 0.7:
                    claim(session, job_id, "w", 30)
    assert len(released(settings)) > 100  # lanes and tenants took turns through many passes
