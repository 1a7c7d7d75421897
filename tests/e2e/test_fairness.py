"""Fairness between tenants, end to end: a real API server, a real Celery worker and the tiny model. One
tenant's burst waits in SQL; another tenant's single job starts within a few jobs' time of arriving."""

from __future__ import annotations

import time

import redis
from sqlalchemy import select

from shared.db import session_scope
from shared.jobs import create_job, new_job_id
from shared.keys import hash_key
from shared.models import ApiKey, Job
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ApiServer, Client, serving_worker

SHORT = {"max_new_tokens": 8, "max_denoising_steps": 4}


def tenant_of(settings, key: str) -> str:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key)))


def queue_burst(settings, tenant: str, count: int) -> None:
    """`count` queued jobs of `tenant`, recorded as the API records them (the sweeper releases them)."""
    with session_scope(settings.database_url) as session:
        for i in range(count):
            job = Job(
                id=new_job_id(), tenant_id=tenant, kind="generate", model=TINY, input={"prompt": f"burst {i}"},
                input_ids=[2, 3, 4], params={**SHORT, "seed": i},
            )  # fmt: skip
            create_job(session, job)


def test_a_tenants_single_job_starts_within_a_few_jobs_of_another_tenants_burst(
    settings, keys, backend, model_host
) -> None:
    # A Redis database of its own (the shared live worker must not take these jobs); four rows at once.
    url = settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 4}"
    settings = settings.with_(redis_url=url, engine_max_rows=4, release_depth=2, tenant_in_flight=4)
    redis.Redis.from_url(url).flushdb()
    queue_burst(settings, tenant_of(settings, keys["a"]), 200)
    try:
        with ApiServer(settings) as api, serving_worker(settings, model_host):
            b = Client(api.url, keys["b"])
            wait_until_succeeded(settings, 8)  # the burst is running at full speed
            job = b.submit(model=TINY, prompt="my turn", params=SHORT)
            done = b.wait(job["id"], timeout=60)
        assert done["status"] == "succeeded", done
        with session_scope(settings.database_url) as session:
            mine = session.get(Job, job["id"])
            started_first = select(Job.id).where(
                Job.tenant_id != mine.tenant_id, Job.started_at > mine.created_at, Job.started_at < mine.started_at
            )
            ahead = len(session.scalars(started_first).all())
            waiting = len(session.scalars(select(Job.id).where(Job.status == "queued")).all())
        assert waiting > 100  # first come, first served would have run all of these before it
        assert ahead <= settings.release_depth + 2, f"{ahead} jobs of the burst started first"
    finally:
        redis.Redis.from_url(url).flushdb()


def wait_until_succeeded(settings, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as session:
            if len(session.scalars(select(Job.id).where(Job.status == "succeeded")).all()) >= count:
                return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} jobs succeeded in {timeout}s")
