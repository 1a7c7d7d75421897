"""The broker loses its queues with jobs in flight and a worker serving them: Redis restarted without
persistence, or flushed, while jobs run, wait in the broker and wait in SQL. Jobs running finish; jobs
whose message was lost are released again by the sweeper (shared/broker_loss.py); every accepted job ends
exactly once with its output, and each job's webhook arrives under one id, delivered by a webhook worker
whose own queue was lost too. (tests/e2e/test_broker_loss.py covers the loss with no worker running.)"""

from __future__ import annotations

import pytest
import redis

from shared.contracts import generation_queue
from tests.conftest import TINY
from tests.e2e.live import ApiServer, Client, serving_worker, webhook_worker
from tests.e2e.receiver import Receiver
from tests.faults.checks import (
    assert_each_ended_once_with_its_output,
    assert_no_webhook_lost_or_doubled,
    outcome_figures,
    report,
    wait_for_webhooks_to_settle,
)

JOB = {"model": TINY, "prompt": "in flight", "params": {"max_new_tokens": 16, "max_denoising_steps": 200}}


@pytest.mark.parametrize("loss", ["restart", "flush"])
def test_jobs_in_flight_when_redis_loses_its_queues_end_once(settings, keys, private_redis, model_host, loss) -> None:
    # 2 rows run, up to release_depth messages wait in the broker, the rest in SQL
    settings = settings.with_(redis_url=private_redis.url, engine_max_rows=2, release_lost_seconds=0.5)
    receiver = Receiver()
    try:
        with ApiServer(settings) as api, serving_worker(settings, model_host), webhook_worker(settings):
            client = Client(api.url, keys["a"])
            hook = client.http.post(
                f"{api.url}/v1/webhook_endpoints",
                json={"url": receiver.script("/hooks"), "events": ["job.succeeded", "job.failed"]},
                timeout=10,
            )
            assert hook.status_code == 201, hook.text
            jobs = [client.submit(**JOB)["id"] for _ in range(12)]
            client.wait(jobs[0], {"running", "succeeded"})
            broker = redis.Redis.from_url(private_redis.url)
            waiting = broker.llen(generation_queue(TINY))
            assert waiting > 0, "no job was waiting in the broker: nothing was tested"
            if loss == "restart":
                private_redis.stop()
                private_redis.start()  # same port, empty: the queue is gone
            else:
                broker.flushall()
            assert broker.llen(generation_queue(TINY)) == 0
            for job_id in jobs:
                client.wait(job_id, timeout=40)
            receiver.wait_for("/hooks", len(jobs), timeout=30)
            wait_for_webhooks_to_settle(settings.database_url, jobs)
    finally:
        receiver.close()
    assert_each_ended_once_with_its_output(settings.database_url, jobs)
    assert_no_webhook_lost_or_doubled(settings.database_url, jobs, receiver, "/hooks")
    report(f"redis {loss}: {waiting} messages lost from the broker; {outcome_figures(settings.database_url, jobs)}")
