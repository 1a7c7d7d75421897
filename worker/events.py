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
from collections.abc import Callable, Sequence
from typing import Any

import redis

from shared.contracts import cut_at_stop, streamable
from shared.events import publish_event

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
        self, job_id: str, decode: Decode, canvas_sink: Sink | None = None, stops: Sequence[str] = ()
    ) -> Callable[[str, str, dict[str, Any]], None]:
        """The callback to hand to Engine.submit for one job. Canvas events carry text deltas that add up
        to the job's output text: a character split across canvases waits for its last byte, a tail that
        could begin one of `stops` waits for the next canvas, and nothing from the first stop string on is
        sent. Drafts carry the whole draft canvas decoded. The engine's 'finished' is not relayed: the task
        publishes the final status once the database has it."""
        committed: list[int] = []
        sent = [""]  # text already sent in canvas deltas
        stop_list = list(stops)

        def on_event(_request_id: str, kind: str, data: dict[str, Any]) -> None:
            if kind == "draft":
                self.publish(job_id, kind, data, decode)
            elif kind == "canvas":
                committed.extend(data["token_ids"])
                text = decode(committed)
                if data.get("final"):
                    ready = cut_at_stop(text, stop_list)[0]
                else:
                    ready = streamable(text.rstrip("\ufffd"), stop_list)[0]  # U+FFFD: an incomplete character
                delta = ready[len(sent[0]) :] if ready.startswith(sent[0]) else ""
                sent[0] += delta
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
