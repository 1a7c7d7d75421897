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

from shared.metrics import serve_metrics

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
    """Beats every `interval` seconds with what `describe()` returns, until `stop()`."""

    def __init__(self, redis_url: str, name: str, describe: Callable[[], dict[str, Any]], interval: float = 10.0):
        super().__init__(name="canvas-heartbeat", daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self.worker_name, self.describe, self.interval = name, describe, interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                beat(self.client, self.worker_name, self.describe())
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # a description that failed once must not stop the beating
                log.exception("heartbeat description failed")
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        """Stop beating and remove this worker's key, so it leaves the list at once (not after the TTL)."""
        self._stopped.set()
        if self.is_alive():
            self.join(5)
        try:
            self.client.delete(PREFIX + self.worker_name)
        except redis.RedisError as exc:
            log.warning("heartbeat key not removed: %s", exc)


class WorkerServices:
    """What a worker process runs beside its tasks: its heartbeat, and its metrics server when
    CANVAS_METRICS_PORT is set. Started by the worker's start step, stopped together by its stop step."""

    def __init__(self, metrics_port: int) -> None:
        self.metrics_port = metrics_port
        self._stops: list[Callable[[], None]] = []

    def start(self, heartbeat: Heartbeat) -> None:
        if self.metrics_port > 0:  # first: a port in use fails the start before anything else runs
            self._stops.append(serve_metrics(self.metrics_port))
        heartbeat.start()
        self._stops.append(heartbeat.stop)

    def stop(self) -> None:
        while self._stops:
            self._stops.pop()()
