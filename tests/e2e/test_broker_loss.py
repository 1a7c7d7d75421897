"""Broker loss: jobs released to a Redis that is then flushed, or restarted without persistence, are
released again by the sweeper and run exactly once. A private redis-server, never the shared one."""

from __future__ import annotations

import shutil

import pytest
import redis

from shared.contracts import generation_queue
from shared.local_redis import LocalRedis
from tests.conftest import TINY
from tests.e2e.live import ApiServer, Client, serving_worker


@pytest.fixture
def private_redis(tmp_path):
    server = LocalRedis(tmp_path / "redis", executable=shutil.which("redis-server")).start()
    yield server
    server.stop()


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_jobs_the_broker_lost_are_released_again_and_run_once(settings, keys, private_redis, model_host, loss) -> None:
    settings = settings.with_(redis_url=private_redis.url, release_lost_seconds=0.5)
    broker = redis.Redis.from_url(private_redis.url)
    with ApiServer(settings) as api:
        client = Client(api.url, keys["a"])
        jobs = [client.submit(model=TINY, prompt=f"lost {i}", params={"max_new_tokens": 8}) for i in range(3)]
        assert broker.llen(generation_queue(TINY)) == 3  # released at submission: in the broker, unclaimed
        if loss == "flushall":
            broker.flushall()
        else:  # no persistence: the restarted server is empty
            private_redis.stop()
            private_redis.start()
        assert broker.llen(generation_queue(TINY)) == 0
        with serving_worker(settings, model_host):
            done = [client.wait(job["id"], timeout=30) for job in jobs]
    for job in done:
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1
        assert [e["status"] for e in job["timeline"]] == ["queued", "running", "succeeded"]
