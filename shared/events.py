"""Live job events in Redis Streams: status changes, denoising drafts, committed canvases.

Redis holds them in bounded memory (the broker's Redis runs `noeviction`, so what it holds must not grow
with the jobs it has seen). Two streams per job, both capped and expiring:

- events (status, canvas, metrics): at most STREAM_MAXLEN entries, kept LIVE_TTL_SECONDS after the last
  one while the job runs and FINISHED_TTL_SECONDS after its terminal status;
- drafts (a preview of the canvas being denoised, several a second): only the newest DRAFT_MAXLEN,
  gone DRAFT_TTL_SECONDS after the last one.

A reader gets both merged in the order they were written (entry ids come from one Redis clock). A late
subscriber reads the history first, then blocks for new entries; the events of a job end with its
terminal status event. The SQL row stays the source of truth: events are a live view, and losing them
(Redis down, or expired) loses no job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import redis

from shared.states import TERMINAL

log = logging.getLogger(__name__)

STREAM_MAXLEN = 2000
LIVE_TTL_SECONDS = 3600
FINISHED_TTL_SECONDS = 300
DRAFT_MAXLEN = 32
DRAFT_TTL_SECONDS = 60
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def stream_key(job_id: str) -> str:
    return f"canvas:events:{job_id}"


def draft_key(job_id: str) -> str:
    return f"canvas:drafts:{job_id}"


def publish_event(client: redis.Redis, job_id: str, event_type: str, data: dict[str, Any]) -> None:
    """Append one event; never raises (a live view must not fail a job, nor a full Redis stop one)."""
    if event_type == "draft":  # exact trimming: an approximate one keeps a whole node (~100 entries)
        key, maxlen, approximate, ttl = draft_key(job_id), DRAFT_MAXLEN, False, DRAFT_TTL_SECONDS
    else:
        finished = event_type == "status" and data.get("status") in TERMINAL_VALUES
        ttl = FINISHED_TTL_SECONDS if finished else LIVE_TTL_SECONDS
        key, maxlen, approximate = stream_key(job_id), STREAM_MAXLEN, True
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {"type": event_type, "data": json.dumps(data)}, maxlen=maxlen, approximate=approximate)
        pipe.expire(key, ttl)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("event %s of job %s not published: %s", event_type, job_id, exc)


def read_events(
    client: redis.Redis, job_id: str, after: str = "0-0", block_ms: int = 1000, drafts_after: str | None = None
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Events and drafts after `after` (drafts after `drafts_after`, by default the same id) as (id, type,
    data), in the order they were written; waits up to `block_ms` when there are none yet."""
    keys = {stream_key(job_id): after, draft_key(job_id): drafts_after or after}
    response = client.xread(keys, block=block_ms, count=500)  # type: ignore[arg-type]
    entries = [(_text(entry_id), _text(key), fields) for key, batch in response or [] for entry_id, fields in batch]
    for entry, _key, fields in sorted(entries, key=_order):
        kind = fields[b"type"].decode() if b"type" in fields else fields["type"]
        raw = fields[b"data"] if b"data" in fields else fields["data"]
        yield entry, kind, json.loads(raw)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _order(entry: tuple[str, str, Any]) -> tuple[int, bool, int]:
    """By the millisecond of the entry id; within one millisecond (the sequence numbers of two streams do
    not compare) events before drafts, so a job's terminal event never hides behind a draft."""
    entry_id, key, _fields = entry
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), key.startswith("canvas:drafts:"), int(sequence or 0)
