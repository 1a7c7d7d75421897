"""Benchmark: server-side render time of every admin dashboard page with 100,000 jobs in the database.

Seeds a fresh SQLite file (or a fresh PostgreSQL database) through the Alembic migrations with jobs of
every status, kind, model and tenant over 30 days, their timeline events, webhook deliveries and one long
fine-tune; logs in through the form with the Flask test client and times each page in-process (no
network). Prints one line per page: median, p95 and max in milliseconds. Numbers, not assertions.

  python bench/admin_pages.py [--jobs 100000] [--backend sqlite|postgresql] [--repeat 20] [--drop-indexes]

PostgreSQL: a temporary database is made on CANVAS_BENCH_PG (default postgresql://postgres@127.0.0.1:5432/
postgres) and dropped afterwards. Redis (REDIS_URL, default redis://127.0.0.1:6379/13) serves the workers
page; without it that page shows its error state. --drop-indexes removes migration 0004's indexes, to see
what they buy.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from sqlalchemy import insert, text

from api.app import create_app
from shared.db import dispose_engine, get_engine, session_scope
from shared.keys import create_key
from shared.migrate import upgrade
from shared.models import Job, JobEvent, ModelRecord, WebhookAttempt, WebhookEndpoint, WebhookMessage
from shared.settings import Settings

MODELS = ("canvas-26b", "canvas-small", "canvas-tiny")
TENANTS = [f"ten_{i:04d}" for i in range(50)]
STATUSES = ["succeeded"] * 85 + ["failed"] * 5 + ["canceled"] * 3 + ["queued"] * 4 + ["running"] * 2 + ["expired"]
DAYS = 30
BATCH = 5000
DASHBOARD_INDEXES = {
    "jobs": ("ix_jobs_created", "ix_jobs_status_created", "ix_jobs_model_created", "ix_jobs_kind_created",
             "ix_jobs_finished"),
    "webhook_messages": ("ix_webhook_messages_created",),
}  # fmt: skip


def job_row(i: int, now: datetime, rng: random.Random) -> dict[str, object]:
    created = now - timedelta(seconds=rng.uniform(0, DAYS * 86400))
    status = rng.choice(STATUSES)
    fine_tune = rng.random() < 0.02
    started = created + timedelta(seconds=rng.uniform(0.01, 5)) if status != "queued" else None
    finished = started + timedelta(seconds=rng.uniform(0.5, 30)) if started and status != "running" else None
    run_ms = (finished - started).total_seconds() * 1000 if finished and started else None
    params = (
        {"base_model": MODELS[1], "method": "lora", "quantization": "none", "examples": 500, "seed": i,
         "hyperparameters": {"max_steps": 400, "checkpoint_every": 100}}
        if fine_tune
        else {"max_new_tokens": 256, "max_denoising_steps": 48, "seed": i}
    )  # fmt: skip
    return {
        "id": ("ft_" if fine_tune else "job_") + uuid.UUID(int=rng.getrandbits(128)).hex,
        "tenant_id": rng.choice(TENANTS),
        "kind": "fine_tune" if fine_tune else "generate",
        "model": rng.choice(MODELS),
        "status": status,
        "input": {"prompt": "Once upon a time " * 8},
        "input_ids": list(range(64)),
        "params": params,
        "output": {"text": "lorem ipsum " * 40, "token_ids": list(range(256)), "finish_reason": "length"}
        if status == "succeeded" and not fine_tune
        else None,
        "stats": {"queue_ms": 10.0, "run_ms": run_ms, "output_tokens": 256} if status == "succeeded" else None,
        "error": {"type": "worker_lost", "message": "the worker died"} if status == "failed" else None,
        "attempts": 1,
        "worker": "gpu-0:1",
        "created_at": created,
        "started_at": started,
        "finished_at": finished,
    }


def events_of(job: dict[str, object]) -> Iterator[dict[str, object]]:
    yield {"job_id": job["id"], "type": "status", "status": "queued", "created_at": job["created_at"]}
    if job["started_at"]:
        yield {"job_id": job["id"], "type": "status", "status": "running", "created_at": job["started_at"]}
    if job["finished_at"]:
        yield {"job_id": job["id"], "type": "status", "status": job["status"], "created_at": job["finished_at"]}


def seed(url: str, count: int) -> dict[str, str]:
    """Jobs, events, deliveries, one 2,000-step fine-tune; returns ids the pages are timed on."""
    rng = random.Random(0)
    now = datetime.now(UTC)
    engine = get_engine(url)
    jobs = [job_row(i, now, rng) for i in range(count)]
    with engine.begin() as conn:
        conn.execute(insert(ModelRecord), [
            {"name": m, "path": "/models/" + m, "canvas_length": 256, "max_positions": 8192, "vocab_size": 262144,
             "eos_token_ids": [1], "pad_token_id": 0} for m in MODELS])  # fmt: skip
        for start in range(0, count, BATCH):
            chunk = jobs[start : start + BATCH]
            conn.execute(insert(Job), chunk)
            conn.execute(insert(JobEvent), [e for j in chunk for e in events_of(j)])
        endpoint = {"id": "we_bench", "tenant_id": TENANTS[0], "url": "https://hooks.example/canvas",
                    "events": ["job.succeeded"], "secret": "whsec_x", "status": "enabled", "created_at": now,
                    "updated_at": now}  # fmt: skip
        conn.execute(insert(WebhookEndpoint), [endpoint])
        hooked = [j for j in jobs if j["finished_at"]][: count // 5]
        messages = [
            {"id": f"msg_{j['id']}", "tenant_id": j["tenant_id"], "job_id": j["id"], "endpoint_id": "we_bench",
             "url": endpoint["url"], "event_type": "job.succeeded", "payload": {"type": "job.succeeded"},
             "status": "failed" if k % 10 == 0 else "delivered", "attempts": 1,
             "last_status_code": 500 if k % 10 == 0 else 200, "created_at": j["finished_at"]}
            for k, j in enumerate(hooked)
        ]  # fmt: skip
        for start in range(0, len(messages), BATCH):
            conn.execute(insert(WebhookMessage), messages[start : start + BATCH])
            conn.execute(insert(WebhookAttempt), [
                {"message_id": m["id"], "attempt": 1, "status_code": m["last_status_code"], "latency_ms": 12.0,
                 "created_at": m["created_at"]} for m in messages[start : start + BATCH]])  # fmt: skip
        fine_tune = next(j for j in jobs if j["kind"] == "fine_tune")
        conn.execute(insert(JobEvent), [
            {"job_id": fine_tune["id"], "type": "metrics", "created_at": now,
             "data": {"step": s, "loss": 5 / s**0.3, **({"eval_loss": 5.2 / s**0.3} if s % 100 == 0 else {})}}
            for s in range(1, 2001)])  # fmt: skip
    newest = max(jobs, key=lambda j: j["created_at"])
    return {"job": str(hooked[0]["id"]), "newest": str(newest["id"]), "fine_tune": str(fine_tune["id"])}


def pages(ids: dict[str, str]) -> list[str]:
    return [
        "/admin/jobs",
        "/admin/jobs?status=failed",
        "/admin/jobs?status=running",
        f"/admin/jobs?model={MODELS[0]}",
        "/admin/jobs?kind=fine_tune",
        f"/admin/jobs?tenant={TENANTS[7]}",
        f"/admin/jobs?status=failed&model={MODELS[1]}&tenant={TENANTS[3]}",
        f"/admin/jobs?q={ids['newest']}",
        "/admin/jobs?limit=100",
        "/admin/jobs.json",
        "DEEP",  # the 20th page of the unfiltered table, reached through its cursor
        f"/admin/jobs/{ids['job']}",
        "/admin/fine-tunes",
        f"/admin/fine-tunes/{ids['fine_tune']}",
        f"/admin/fine-tunes/{ids['fine_tune']}/metrics.json",
        "/admin/workers",
        "/admin/webhooks",
        "/admin/webhooks?status=failed",
    ]


def deep_page(client) -> str:
    path = "/admin/jobs"
    for _ in range(19):
        found = re.search(r'rel="next" href="([^"]+)"', client.get(path).text)
        path = found.group(1).replace("&amp;", "&")
    return path


def time_pages(settings: Settings, ids: dict[str, str], repeat: int) -> None:
    with session_scope(settings.database_url) as session:
        key = create_key(session, "bench", admin=True)[1]
    client = create_app(settings).test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
    assert client.post("/admin/login", data={"key": key, "csrf_token": token}).status_code == 302
    print(f"{'page':<72} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for path in pages(ids):
        path = deep_page(client) if path == "DEEP" else path
        client.get(path)  # warm: template compilation, connection pool
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        label = path if len(path) <= 72 else path[:69] + "..."
        print(f"{label:<72} {statistics.median(times):>10.1f} {p95:>8.1f} {times[-1]:>8.1f}")


@contextmanager
def database(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'bench.db'}"
        return
    admin = os.environ.get("CANVAS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"canvas_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        yield url
    finally:
        dispose_engine(url)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_dashboard_indexes(url: str) -> None:
    with get_engine(url).begin() as conn:
        for names in DASHBOARD_INDEXES.values():
            for name in names:
                conn.execute(text(f"DROP INDEX {name}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--drop-indexes", action="store_true", help="without migration 0004's indexes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.backend, Path(tmp)) as url:
        upgrade(url)
        started = time.perf_counter()
        ids = seed(url, args.jobs)
        if args.drop_indexes:
            drop_dashboard_indexes(url)
        with get_engine(url).begin() as conn:
            conn.execute(text("ANALYZE"))  # statistics for the planner, as a live database would have
        without = " (without the 0004 indexes)" if args.drop_indexes else ""
        seconds = time.perf_counter() - started
        print(f"# {args.backend}: {args.jobs:,} jobs seeded in {seconds:.1f} s{without}; {args.repeat} renders a page")
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
        time_pages(Settings(database_url=url, redis_url=redis_url, var_dir=Path(tmp)), ids, args.repeat)


if __name__ == "__main__":
    main()
