"""Wakes for the sweepers' webhook dispatch, over real Redis pub/sub and a real database session: a
committed transaction that wrote a due message publishes one wake, a rolled-back one none, and a Redis
that cannot be reached costs the writer nothing."""

from __future__ import annotations

import time

import pytest
import redis

from shared.db import session_scope
from shared.webhook_wake import CHANNEL, install, mark_due, publish_wake


def wakes(pubsub: redis.client.PubSub, wait: float) -> int:
    """The wakes that arrive within `wait` seconds."""
    count, deadline = 0, time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if pubsub.get_message(timeout=left) is not None:
            count += 1
    return count


def test_a_commit_that_wrote_a_due_message_wakes_the_sweepers_and_a_rollback_does_not(settings) -> None:
    install(settings.redis_url)
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    try:
        wakes(pubsub, 0.2)  # the subscription's confirmation
        with pytest.raises(RuntimeError), session_scope(settings.database_url) as session:
            mark_due(session)
            raise RuntimeError("the transaction fails")
        with session_scope(settings.database_url):
            pass  # a commit with nothing marked
        assert wakes(pubsub, 0.5) == 0
        with session_scope(settings.database_url) as session:
            mark_due(session)
        assert wakes(pubsub, 2.0) == 1
    finally:
        pubsub.close()


def test_a_redis_that_cannot_be_reached_costs_the_writer_nothing() -> None:
    started = time.monotonic()
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1.0)  # nothing on port 1
    publish_wake(unreachable)  # refused at once, logged, dropped
    assert time.monotonic() - started < 2.0
