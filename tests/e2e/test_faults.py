"""Faults: Redis down when a job is accepted, a worker killed mid-job. Nothing accepted is lost.

The worker that is killed is a process of its own; workers that only have to run jobs run in this process."""

from __future__ import annotations

import shutil

import pytest
import requests

from shared.db import session_scope
from shared.local_redis import LocalRedis
from shared.models import OutboxMessage
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ApiServer, Client, Worker, serving_worker, webhook_worker
from tests.e2e.receiver import Receiver
from tests.e2e.test_generation_jobs import LONG
from tests.faults.checks import (
    assert_each_ended_once_with_its_output,
    assert_no_webhook_lost_or_doubled,
    wait_for_webhooks_to_settle,
)


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of this test's own, which the test may stop and start again on the same port."""
    server = LocalRedis(tmp_path / "redis", executable=shutil.which("redis-server")).start()
    yield server
    server.stop()


def test_a_job_accepted_while_redis_is_down_completes_after_redis_returns(
    settings, keys, private_redis, model_host
) -> None:
    settings = settings.with_(redis_url=private_redis.url)
    with ApiServer(settings) as api:
        client = Client(api.url, keys["a"])
        private_redis.stop()
        assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 503
        job = client.submit(model=TINY, prompt="still here", params={"max_new_tokens": 8})
        assert job["status"] == "queued"
        with session_scope(settings.database_url) as session:
            message = session.query(OutboxMessage).filter_by(job_id=job["id"]).one()
            assert message.published_at is None
            assert message.last_error
        private_redis.start()  # same port: the sweeper publishes the outbox
        with serving_worker(settings, model_host):
            done = client.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1


def test_a_job_on_a_killed_worker_is_requeued_and_completes(settings, keys, backend, tmp_path, model_host) -> None:
    # A Redis database of its own, so the shared live worker cannot take this job.
    settings = settings.with_(
        redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 2}", lease_seconds=4.0
    )
    receiver = Receiver()
    with ApiServer(settings) as api, webhook_worker(settings):
        client = Client(api.url, keys["a"])
        hook = {"url": receiver.script("/hooks"), "events": ["job.succeeded", "job.failed"]}
        assert client.http.post(f"{api.url}/v1/webhook_endpoints", json=hook, timeout=10).status_code == 201
        first = Worker(settings, TINY, tmp_path / "first.log").wait_ready()
        try:
            job = client.submit(model=TINY, prompt="survive", params={**LONG, "max_denoising_steps": 600})
            client.wait(job["id"], {"running"})
            first.kill()
            with serving_worker(settings, model_host):  # takes the job once the reaper requeues it
                done = client.wait(job["id"])
            receiver.wait_for("/hooks", 1)
            wait_for_webhooks_to_settle(settings.database_url, [job["id"]])
        finally:
            first.stop()
            receiver.close()
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    statuses = [e["status"] for e in done["timeline"]]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    assert_each_ended_once_with_its_output(settings.database_url, [job["id"]])
    assert_no_webhook_lost_or_doubled(settings.database_url, [job["id"]], receiver, "/hooks")
