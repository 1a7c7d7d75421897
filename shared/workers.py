"""Worker heartbeats in Redis: what each live worker is (kind, host, GPU, models, rows in flight) and when it
last beat (worker/heartbeats.py says what each kind publishes).

Workers write their own key with a TTL; a worker that stops beating disappears. The API reads them to
decide what can run (a quantized fine-tune needs a GPU training worker) and the dashboard shows them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)
PREFIX = "canvas:worker:"
TTL_SECONDS = 30


def beat(client: redis.Redis, name: str, info: dict[str, Any]) -> None:
    client.set(PREFIX + name, json.dumps({**info, "name": name, "beat_at": time.time()}), ex=TTL_SECONDS)


def live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    keys = list(client.scan_iter(match=PREFIX + "*", count=200))
    values = client.mget(keys) if keys else []
    return [json.loads(v) for v in values if v]


class Heartbeat(threading.Thread):
    """Beats every `interval` seconds with what `describe()` returns."""

    def __init__(self, redis_url: str, name: str, describe: Callable[[], dict[str, Any]], interval: float = 10.0):
        super().__init__(name="canvas-heartbeat", daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self.worker_name, self.describe, self.interval = name, describe, interval

    def run(self) -> None:
        while True:
            try:
                beat(self.client, self.worker_name, self.describe())
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # a description that failed once must not stop the beating
                log.exception("heartbeat description failed")
            time.sleep(self.interval)
