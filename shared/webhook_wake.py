"""Waking the sweeper's webhook dispatch as soon as a message is due, instead of at its next period.

A transaction that writes a due webhook message (an event with subscribers, a replay, a delivery that ends
and so unblocks the next message of its job) marks its session (`mark_due`); once that session commits,
the process publishes a wake on a Redis channel (`install`, one listener per process). Every sweeper
subscribes to the channel (`WakeSubscriber`) and runs its webhook dispatch at once. Only sweepers dispatch,
as before; a lost wake (Redis down, a subscriber reconnecting) costs only the wait for the next period.
Knows SQLAlchemy sessions and Redis, not what a message holds.
"""

from __future__ import annotations

import logging
import threading

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "canvas:webhooks:due"
DUE = "canvas.webhooks_due"  # the session.info key of a transaction that wrote a due message
_redis_url: list[str] = []  # the process's Redis for wakes (set by `install`)
_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def mark_due(session: Session) -> None:
    """This transaction writes a message that is due now: wake the sweepers once it commits."""
    session.info[DUE] = True


def install(redis_url: str) -> None:
    """Publish a wake on `redis_url` after every commit of a marked session in this process (the listener
    is registered once; a later call changes the Redis it publishes to)."""
    with _lock:
        first = not _redis_url
        _redis_url[:] = [redis_url]
    if first:
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)


def _after_commit(session: Session) -> None:
    if session.info.pop(DUE, False) and _redis_url:
        publish_wake(_redis_url[0])


def _after_rollback(session: Session) -> None:
    session.info.pop(DUE, None)  # nothing was written


def publish_wake(redis_url: str) -> None:
    """Best effort: a Redis error is logged and dropped (the sweepers' period still dispatches)."""
    try:
        with _lock:
            client = _clients.get(redis_url)
            if client is None:
                client = _clients[redis_url] = redis.Redis.from_url(redis_url, socket_timeout=1.0)
        client.publish(CHANNEL, b"1")
    except redis.RedisError as exc:
        log.debug("webhook wake not published: %s", exc)


class WakeSubscriber(threading.Thread):
    """Sets `woken` whenever a wake arrives on `redis_url`'s channel; reconnects after a Redis error."""

    def __init__(self, redis_url: str, woken: threading.Event, stopped: threading.Event) -> None:
        super().__init__(name="canvas-webhook-wakes", daemon=True)
        self.redis_url, self.woken, self.stopped = redis_url, woken, stopped

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except redis.RedisError as exc:
                log.debug("webhook wakes: %s; subscribing again", exc)
                self.stopped.wait(1.0)

    def _listen(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5.0)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            while not self.stopped.is_set():
                if pubsub.get_message(timeout=1.0) is not None:
                    self.woken.set()
        finally:
            pubsub.close()
            client.close()
