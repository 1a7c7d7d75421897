"""Live job events in Redis Streams: status changes, denoising drafts, committed canvases.

One stream per job, capped and expiring. A late subscriber reads the history first, then blocks for new
entries; the stream of a job ends with its terminal status event. The SQL row stays the source of truth:
events are a live view, and losing them (Redis down) loses no job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import redis

log = logging.getLogger(__name__)

STREAM_MAXLEN = 2000
STREAM_TTL_SECONDS = 24 * 3600


def stream_key(job_id: str) -> str:
    return f"canvas:events:{job_id}"


def publish_event(client: redis.Redis, job_id: str, event_type: str, data: dict[str, Any]) -> None:
    """Append one event; never raises (a live view must not fail a job)."""
    try:
        key = stream_key(job_id)
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {"type": event_type, "data": json.dumps(data)}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.expire(key, STREAM_TTL_SECONDS)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("event %s of job %s not published: %s", event_type, job_id, exc)


def read_events(
    client: redis.Redis, job_id: str, after: str = "0-0", block_ms: int = 1000
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Events after `after` as (id, type, data); waits up to `block_ms` when there are none yet."""
    response = client.xread({stream_key(job_id): after}, block=block_ms, count=500)
    for _key, entries in response or []:
        for entry_id, fields in entries:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            kind = fields[b"type"].decode() if b"type" in fields else fields["type"]
            raw = fields[b"data"] if b"data" in fields else fields["data"]
            yield entry, kind, json.loads(raw)
