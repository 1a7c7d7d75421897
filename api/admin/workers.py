"""Workers and queues: each live worker from its heartbeat (host, GPU, models, rows in flight, heartbeat
age) with its recent tokens/s from the jobs it finished; the depth of every queue; jobs per minute and
failure rate over the last hour."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import redis
from flask import render_template
from markupsafe import Markup
from sqlalchemy import select

from api.admin.blueprint import bp
from api.admin.charts import bar_chart
from api.admin.queries import Finished, finished_since
from api.state import db_session, events_client
from shared.contracts import TRAIN_QUEUE, WEBHOOK_QUEUE, generation_queue
from shared.fairness import waiting_by_queue
from shared.models import ModelRecord, utcnow
from shared.workers import live_workers

PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's Redis lists per priority step
THROUGHPUT_MINUTES = 5
HOUR = 60


def queue_names() -> list[str]:
    """The queue of every base model (adapters and fine-tunes ride on their base's), training, webhooks."""
    stmt = select(ModelRecord.name).where(ModelRecord.base_model.is_(None)).order_by(ModelRecord.name).limit(200)
    return [generation_queue(n) for n in db_session().scalars(stmt)] + [TRAIN_QUEUE, WEBHOOK_QUEUE]


def queue_depths(client: redis.Redis, names: list[str]) -> dict[str, int]:
    """What waits in each queue: the lengths of its Redis lists, plus the jobs the fair publisher holds."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(name + suffix)
    lengths = pipe.execute()
    n = len(PRIORITY_SUFFIXES)
    held = waiting_by_queue(db_session())
    return {name: sum(lengths[i * n : (i + 1) * n]) + held[name] for i, name in enumerate(names)}


def tokens_per_second(finished: list[Finished]) -> dict[str | None, float]:
    """Output tokens per second of each worker over the last few minutes (what it finished, per second)."""
    since = utcnow().timestamp() - THROUGHPUT_MINUTES * 60
    tokens: dict[str, float] = defaultdict(float)
    for at, _status, worker, stats in finished:
        if worker and at.timestamp() >= since:
            tokens[worker] += (stats or {}).get("output_tokens") or 0
    return {w: n / (THROUGHPUT_MINUTES * 60) for w, n in tokens.items()}


def hourly_charts(finished: list[Finished]) -> tuple[Markup, Markup]:
    """Jobs finished per minute, and the share of them that failed, over the last hour (oldest first)."""
    now = utcnow().timestamp()
    done, failed = [0] * HOUR, [0] * HOUR
    for at, status, _worker, _stats in finished:
        minute = HOUR - 1 - int((now - at.timestamp()) // 60)
        if 0 <= minute < HOUR:
            done[minute] += 1
            failed[minute] += status == "failed"
    rate = [100 * f / d if d else 0.0 for d, f in zip(done, failed, strict=True)]
    return (
        bar_chart([float(d) for d in done], "jobs finished per minute", "minutes ago"),
        bar_chart(rate, "failure rate per minute (%)", "minutes ago", "failure-bars", floor_top=10.0),
    )


def worker_rows(client: redis.Redis, throughput: dict[str, float]) -> list[dict[str, Any]]:
    now = time.time()
    rows = [
        {**w, "age_s": max(0.0, now - w.get("beat_at", now)), "tokens_per_s": throughput.get(w.get("worker_id"), 0.0)}
        for w in live_workers(client)
    ]
    return sorted(rows, key=lambda w: (w.get("kind", ""), w.get("name", "")))


@bp.get("/workers")
def workers_page() -> str:
    finished = finished_since(db_session(), HOUR)
    jobs_chart, failure_chart = hourly_charts(finished)
    names = queue_names()
    client = events_client()
    workers, depths, redis_error = [], {}, None
    try:
        workers, depths = worker_rows(client, tokens_per_second(finished)), queue_depths(client, names)
    except redis.RedisError as exc:
        redis_error = str(exc)
    return render_template(
        "admin/workers.html",
        workers=workers,
        depths=depths,
        redis_error=redis_error,
        jobs_chart=jobs_chart,
        failure_chart=failure_chart,
        finished=len(finished),
        failed=sum(1 for f in finished if f[1] == "failed"),
    )
