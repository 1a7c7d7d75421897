"""Benchmark: the fair publisher's SQL (shared/fairness.py, shared/broker_loss.py) against a large backlog on
PostgreSQL. Numbers, not assertions.

A fresh database gets `--waiting` generate jobs queued in SQL (not released) across `--tenants` tenants of
one queue, 3 released ones, and `--finished` finished ones; then each query the publisher runs is timed (mean
of 5 after one warm-up):

- queue_state: what every release pass reads (at each submission, claim, finish and sweep, under the
  queue's lock), with a release depth of `--depth` and a tenant cap of `--cap` (the default settings, 4 and
  32; 0: none);
- waiting_queues: the queues a sweep passes over;
- next_jobs: one tenant's next 4 jobs;
- stale released: the sweep's broker-loss candidates (queued, released over 15 s ago).

  python bench/release_queries.py [--waiting 100000] [--tenants 50] [--finished 100000] [--depth 4] [--cap 32]

PostgreSQL from CANVAS_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres); the database it makes
is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from sqlalchemy import text

from shared.broker_loss import stale_releases
from shared.db import dispose_engine, session_scope
from shared.fairness import _next_jobs, queue_state, waiting_queues
from shared.migrate import upgrade
from shared.models import utcnow

ADMIN = os.environ.get("CANVAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
QUEUE = "gen.m"
FILL = """INSERT INTO jobs (id, tenant_id, kind, model, status, input, input_ids, params, attempts, created_at,
    queue, priority, lane, finished_at)
SELECT 'job_' || g, 't' || (g % :tenants), 'generate', 'm', CASE WHEN g <= :waiting THEN 'queued' ELSE 'succeeded' END,
    '{"prompt": "a prompt of about a hundred characters, as a client would send it to the model"}',
    '[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]', '{}', 0, now() - (g || ' seconds')::interval,
    :queue, 0, 'interactive', CASE WHEN g > :waiting THEN now() - interval '2 days' END
FROM generate_series(1, :total) g"""


def timed(label: str, url: str, query: Callable) -> None:
    def once() -> None:
        with session_scope(url) as session:
            query(session)

    once()
    start = time.perf_counter()
    for _ in range(5):
        once()
    print(f"{label:>16}: {(time.perf_counter() - start) / 5 * 1000:7.1f} ms")


def stale(session) -> list:
    return stale_releases(session, utcnow() - timedelta(seconds=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--cap", type=int, default=32)
    args = parser.parse_args()
    name = f"canvas_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(url)
        values = {"tenants": args.tenants, "waiting": args.waiting, "total": args.waiting + args.finished}
        with session_scope(url) as session:
            session.execute(text(FILL), {**values, "queue": QUEUE})
            session.execute(text("UPDATE jobs SET released_at = now() WHERE id IN ('job_1', 'job_2', 'job_3')"))
        with session_scope(url) as session:
            session.execute(text("ANALYZE jobs"))
        print(f"{args.waiting} jobs waiting ({args.tenants} tenants, one queue), {args.finished} finished")
        timed("queue_state", url, lambda s: queue_state(s, QUEUE, args.depth, args.cap))
        timed("waiting_queues", url, waiting_queues)
        timed("next_jobs", url, lambda s: _next_jobs(s, QUEUE, "t1", "interactive", 4))
        timed("stale released", url, stale)
    finally:
        dispose_engine(url)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
