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
import os
import threading

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "canvas:webhooks:due"
DUE = "canvas.webhooks_due"  # the session.info key of a transaction that wrote a due message
_redis_url: str | None = None  # where this process publishes its wakes (set by `install`)
_asked = threading.Event()  # a marked commit happened since the publisher last published
_publisher: threading.Thread | None = None
_lock = threading.Lock()


def mark_due(session: Session) -> None:
    """This transaction writes a message that is due now: wake the sweepers once it commits."""
    session.info[DUE] = True


def install(redis_url: str) -> None:
    """Publish a wake on `redis_url` after every commit of a marked session in this process (the listener
    is registered once; a later call changes the Redis it publishes to). A thread of its own publishes,
    so a commit never waits on Redis; wakes asked for while it publishes make one more."""
    global _redis_url
    with _lock:
        first, _redis_url = _redis_url is None, redis_url
    if first:
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction() or not session.info.pop(DUE, False):
        return  # a savepoint's release: the outer transaction has not committed yet
    try:
        _ensure_publisher()
        _asked.set()
    except Exception:  # the commit has happened: nothing here may make it look failed
        log.exception("webhook wake not asked for; the sweepers' period dispatches")


def _after_rollback(session: Session) -> None:
    if not session.in_nested_transaction():
        session.info.pop(DUE, None)  # nothing was written


def _ensure_publisher() -> None:
    """The publishing thread, started on first use and again in a forked child (threads do not survive a
    fork: a server that forks its workers after building the app)."""
    global _publisher
    with _lock:
        if _publisher is None or not _publisher.is_alive():
            _publisher = threading.Thread(target=_publish_when_asked, name="canvas-webhook-wake", daemon=True)
            _publisher.start()


def _publish_when_asked() -> None:
    """The publisher's loop; its Redis client follows the installed URL."""
    url, client = None, None
    while True:
        _asked.wait()
        _asked.clear()  # before publishing: a commit from now on asks for another
        if url != _redis_url or client is None:
            url = _redis_url
            client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        publish_wake(client)


def _reset_in_child() -> None:
    """After a fork: a fresh lock and event, and no publisher (it is started on first use)."""
    global _lock, _asked, _publisher
    _lock, _asked, _publisher = threading.Lock(), threading.Event(), None


os.register_at_fork(after_in_child=_reset_in_child)


def publish_wake(client: redis.Redis) -> None:
    """Best effort: a Redis error is logged and dropped (the sweepers' period still dispatches)."""
    try:
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
            except Exception as exc:  # Redis gone, or anything else: the period still sweeps; try again
                log.debug("webhook wakes: %s; subscribing again", exc)
                self.stopped.wait(1.0)

    def _listen(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
        pubsub = client.pubsub()  # a (re)subscription's confirmation wakes too: a catch-up for wakes missed
        try:
            pubsub.subscribe(CHANNEL)
            while not self.stopped.is_set():
                if pubsub.get_message(timeout=1.0) is not None:
                    self.woken.set()
        finally:
            pubsub.close()
            client.close()
