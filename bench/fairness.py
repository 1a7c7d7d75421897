"""Benchmark: one tenant's single job's wait while another tenant has a burst queued, first-come-first-served
against fair release (shared/fairness.py).

Tenant A has `--burst` jobs queued (recorded as the API records them); a real Celery worker (threads, the
tiny model, `--rows` rows) runs them. Once A's burst runs at full speed, tenant B submits one job through the
real API server. Printed per mode: B's wait (queued to started) and time to finish, how many of A's jobs
started between B's submission and B's start, and how promptly the publisher releases: from submission to
release for B, and from a claim or finish to the release it triggers for A's jobs (p50, p99). Numbers, not
assertions.

  python bench/fairness.py [--burst 1000] [--rows 16] [--modes fifo,fair]

`fifo` is the behaviour before fair release: every job released to the broker at once (release depth 0, no
tenant cap). `fair` uses the default depth and cap. The sweeper runs only every 30 s, so the release
latencies measured are those of the submission, claim and finish paths. SQLite in a temporary directory;
Redis from REDIS_URL (default redis://127.0.0.1:6379/12), whose database is flushed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import redis
from sqlalchemy import delete, select

from shared.db import session_scope
from shared.fairness import release_all
from shared.jobs import create_job, new_job_id
from shared.keys import create_key
from shared.migrate import upgrade
from shared.models import Job, JobEvent, OutboxMessage
from shared.queue import producer
from shared.registry import describe_model_dir, register_model
from shared.settings import Settings
from tests.e2e.live import ApiServer, Client, serving_worker
from worker.host import ModelHost, load_model
from worker.tiny import make_tiny

MODEL = "tiny"
PARAMS = {"max_new_tokens": 8, "max_denoising_steps": 4}


def burst(settings: Settings, tenant: str, count: int) -> None:
    with session_scope(settings.database_url) as session:
        for i in range(count):
            job = Job(
                id=new_job_id(), tenant_id=tenant, kind="generate", model=MODEL, input={"prompt": f"burst {i}"},
                input_ids=[2, 3, 4], params={**PARAMS, "seed": i},
            )  # fmt: skip
            create_job(session, job)


def succeeded(settings: Settings) -> int:
    with session_scope(settings.database_url) as session:
        return len(session.scalars(select(Job.id).where(Job.status == "succeeded")).all())


def release_gaps(jobs: list[Job], after: float) -> list[float]:
    """For each job released after `after` (epoch s), ms from the last claim or finish before its release."""
    events = sorted(t.timestamp() for j in jobs for t in (j.started_at, j.finished_at) if t is not None)
    gaps = []
    for job in jobs:
        if job.released_at is None or job.released_at.timestamp() <= after:
            continue
        before = [t for t in events if t <= job.released_at.timestamp()]
        if before:
            gaps.append((job.released_at.timestamp() - before[-1]) * 1000)
    return gaps


def run(mode: str, settings: Settings, host: ModelHost, burst_size: int) -> None:
    if mode == "fifo":
        settings = settings.with_(release_depth=0, tenant_in_flight=0)
    redis.Redis.from_url(settings.redis_url).flushdb()
    with session_scope(settings.database_url) as session:
        for table in (OutboxMessage, JobEvent, Job):
            session.execute(delete(table))
        create_key(session, "a", tenant_id="ten_a")
        _, key_b = create_key(session, "b", tenant_id="ten_b")
    burst(settings, "ten_a", burst_size)
    with ApiServer(settings) as api, serving_worker(settings, host):
        release_all(settings, producer(settings))
        while succeeded(settings) < 2 * settings.engine_max_rows:
            time.sleep(0.05)
        client = Client(api.url, key_b)
        job = client.submit(model=MODEL, prompt="my turn", params=PARAMS)
        done = client.wait(job["id"], timeout=3600)
        with session_scope(settings.database_url) as session:
            mine = session.get(Job, job["id"])
            jobs = list(session.scalars(select(Job)))
        ahead = sum(1 for j in jobs if j.started_at and mine.created_at < j.started_at < mine.started_at)
        queued = sum(1 for j in jobs if j.status == "queued")
        with session_scope(settings.database_url) as session:  # end the burst: cancel what still waits
            session.execute(delete(Job).where(Job.status == "queued"))
    wait = (mine.started_at - mine.created_at).total_seconds()
    total = (mine.finished_at - mine.created_at).total_seconds()
    release_ms = (mine.released_at - mine.created_at).total_seconds() * 1000
    first_claim = min(j.started_at.timestamp() for j in jobs if j.started_at is not None)
    gaps = sorted(release_gaps([j for j in jobs if j.tenant_id == "ten_a"], first_claim))
    print(
        f"{mode:5s} burst={burst_size} rows={settings.engine_max_rows} depth={settings.release_depth} "
        f"cap={settings.tenant_in_flight}: B waited {wait:.2f} s (done after {total:.2f} s, {done['status']}); "
        f"{ahead} of A's jobs started first; {queued} of A's still queued; "
        f"B released {release_ms:.1f} ms after submission"
    )
    if gaps and mode == "fair":
        p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
        print(f"      A's releases after a claim or finish: p50 {statistics.median(gaps):.1f} ms, p99 {p99:.1f} ms "
              f"({len(gaps)} releases)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--modes", default="fifo,fair")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="canvas-fairness-"))
    url = f"sqlite:///{work / 'canvas.db'}"
    upgrade(url)
    model_dir = make_tiny(work / MODEL, seed=0, canvas_length=32)
    with session_scope(url) as session:
        register_model(session, MODEL, model_dir)
    settings = Settings(
        database_url=url,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12"),
        engine_max_rows=args.rows,
        sweep_seconds=30.0,
        rate_limit_per_minute=0,
        var_dir=work / "var",
    )
    host = ModelHost()
    host.add(load_model(MODEL, model_dir, describe_model_dir(model_dir)["eos_token_ids"], max_rows=args.rows))
    for mode in args.modes.split(","):
        run(mode, settings, host, args.burst)


if __name__ == "__main__":
    main()
