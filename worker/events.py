"""Publishing a job's live events from the worker, off the engine thread.

The engine calls back from its loop; the callback only enqueues, and one publisher thread decodes and
writes to Redis, so publishing never slows denoising. Drafts are dropped when the queue is full;
canvases and status changes are not.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import redis

from shared.events import publish_event
from worker.text_assembly import TextAssembler

log = logging.getLogger(__name__)
Decode = Callable[[list[int]], str]
Sink = Callable[[dict[str, Any]], None]


class EventPublisher(threading.Thread):
    def __init__(self, redis_url: str, max_pending: int = 10_000) -> None:
        super().__init__(name="canvas-events", daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self.pending: queue.Queue[Any] = queue.Queue(max_pending)

    def publish(
        self, job_id: str, event_type: str, data: dict[str, Any], decode: Decode | None = None, sink: Sink | None = None
    ) -> None:
        """Queue an event for Redis; `sink`, if given, also receives it (e.g. to write a webhook message)."""
        item = (job_id, event_type, data, decode, sink)
        if event_type == "draft":
            with contextlib.suppress(queue.Full):  # a live preview may skip frames
                self.pending.put_nowait(item)
        else:
            self.pending.put(item)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been handled (before a job's final status is written,
        so its canvas webhooks precede its terminal one)."""
        marker = threading.Event()
        self.pending.put(marker)
        return marker.wait(timeout)

    def engine_callback(
        self, job_id: str, text: TextAssembler, canvas_sink: Sink | None = None
    ) -> Callable[[str, str, dict[str, Any]], None]:
        """The callback to hand to Engine.submit for one job. Canvas events carry the text deltas that
        `text` assembles (they add up to the job's output text); drafts carry the whole draft canvas
        decoded. The engine's 'finished' is not relayed: the job's status follows once the database has it."""

        def on_event(_request_id: str, kind: str, data: dict[str, Any]) -> None:
            if kind == "draft":
                self.publish(job_id, kind, data, text.decode)
            elif kind == "canvas":
                delta = text.canvas_delta(data["token_ids"], bool(data.get("final")))
                self.publish(job_id, kind, {**data, "text": delta}, sink=canvas_sink)

        return on_event

    def run(self) -> None:
        while True:
            item = self.pending.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            job_id, event_type, data, decode, sink = item
            if decode is not None and "token_ids" in data:
                data = {**data, "text": decode(data["token_ids"])}
            publish_event(self.client, job_id, event_type, data)
            if sink is not None:
                try:
                    sink(data)
                except Exception:  # a failed side channel must not stop the publisher
                    log.exception("event sink of job %s failed", job_id)
