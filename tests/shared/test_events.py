"""Live events in bounded Redis memory, on real Redis servers: drafts keep only the newest few and expire
soon, a finished job's events expire soon, and a reader still gets everything in the order it was written.
A `noeviction` Redis with a small memory limit keeps accepting the broker's writes however many drafts
the workers publish."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.events import (
    DRAFT_MAXLEN,
    DRAFT_TTL_SECONDS,
    FINISHED_TTL_SECONDS,
    LIVE_TTL_SECONDS,
    draft_key,
    publish_event,
    read_events,
    stream_key,
)
from shared.local_redis import LocalRedis

REDIS_BASE = os.environ.get("CANVAS_TEST_REDIS", "redis://127.0.0.1:6379")
CANVAS = list(range(256))  # a real model's canvas: 256 token ids, and its text


def draft(step: int) -> dict[str, object]:
    return {"step": step, "canvas": 0, "token_ids": CANVAS, "text": "x" * 1000}


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{REDIS_BASE}/13")
    yield client
    client.close()


def test_drafts_keep_the_newest_few_and_a_reader_gets_everything_in_order(client: redis.Redis) -> None:
    job = uuid.uuid4().hex
    publish_event(client, job, "status", {"status": "running"})
    for step in range(100):
        publish_event(client, job, "draft", draft(step))
    time.sleep(0.005)  # the canvas a millisecond after the last draft (ids of two streams compare by it)
    publish_event(client, job, "canvas", {"canvas": 0, "token_ids": [5], "text": "a"})
    assert client.xlen(draft_key(job)) == DRAFT_MAXLEN
    assert 0 < client.ttl(draft_key(job)) <= DRAFT_TTL_SECONDS
    assert FINISHED_TTL_SECONDS < client.ttl(stream_key(job)) <= LIVE_TTL_SECONDS
    publish_event(client, job, "status", {"status": "succeeded"})
    assert 0 < client.ttl(stream_key(job)) <= FINISHED_TTL_SECONDS  # a finished job's events go soon

    read = [(kind, data.get("step", data.get("status"))) for _id, kind, data in read_events(client, job)]
    assert read[0] == ("status", "running") and read[-1] == ("status", "succeeded")
    assert [kind for kind, _ in read if kind != "draft"] == ["status", "canvas", "status"]
    assert [step for kind, step in read if kind == "draft"] == list(range(100 - DRAFT_MAXLEN, 100))
    ids = [entry for entry, kind, _ in read_events(client, job) if kind != "draft"]
    after_canvas = [kind for _id, kind, _ in read_events(client, job, after=ids[1])]
    assert after_canvas == ["status"]  # a reader resuming after an event gets no draft older than it


def test_a_noeviction_redis_with_little_memory_keeps_accepting_writes_under_many_drafts(tmp_path) -> None:
    """20 running jobs publish 300 drafts each (about 20 MB of drafts) into a Redis limited to 8 MB: the
    drafts it holds stay a few MB, so the broker's own writes still succeed."""
    server = LocalRedis(tmp_path / "redis", executable=shutil.which("redis-server")).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory", 8 << 20)
        for step in range(300):
            for job in range(20):
                publish_event(client, f"job{job}", "draft", draft(step))
        used = client.info("memory")["used_memory"]
        client.set("broker-write", b"x" * 100_000)  # raises OOM once the drafts have filled the memory
        assert used < 6 << 20, used
    finally:
        server.stop()
