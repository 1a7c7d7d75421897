"""Load: submit, poll, cancel, list and stream against the real API process (gunicorn, as deployed), over
loopback, at a fixed request rate for a bounded time. Prints p50/p99/max latency per operation, the
achieved rate, errors by status, and the most database connections the API held at once (sampled from
PostgreSQL's pg_stat_activity) against what its pools allow: a pool is never exhausted when no request
got a 503 and the peak stays below the pools' size. Numbers, not assertions.

  python bench/load.py [--rate 300] [--seconds 20] [--clients 64] [--workers 2] [--tenants 4]

The API runs as `gunicorn --config deploy/gunicorn.conf.py api.wsgi:app` (gthread, --workers processes of
64 threads) on a fresh PostgreSQL database (CANVAS_BENCH_PG, default postgresql://postgres@127.0.0.1:5432/
postgres; dropped afterwards) and Redis (REDIS_URL, default redis://127.0.0.1:6379/11), with the tiny model
registered and no submission limits. No generation worker runs: this measures the API, its database and
its broker writes, not generation. Each client repeats: submit a job, poll it, and every fifth time cancel
it and read its event stream to the end (a canceled job's stream ends at once), or list the tenant's jobs.
Requests are scheduled open-loop at --rate (request i at start + i/rate), so a slow server shows as
latency, not as a lower offered rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POOL_PER_PROCESS = 15  # shared/db.py: pool_size 5 + max_overflow 10


class Schedule:
    """Open-loop slots: the i-th request may start at start + i / rate; None once the time is up."""

    def __init__(self, rate: float, seconds: float) -> None:
        self.rate, self.total = rate, int(rate * seconds)
        self.start = time.monotonic() + 0.5
        self.issued = 0
        self._lock = threading.Lock()

    def next_slot(self) -> float | None:
        with self._lock:
            if self.issued >= self.total:
                return None
            slot = self.start + self.issued / self.rate
            self.issued += 1
        time.sleep(max(0.0, slot - time.monotonic()))
        return slot


class Results:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def record(self, op: str, seconds: float, status: int) -> None:
        with self._lock:
            self.latency[op].append(seconds)
            self.statuses[(op, status)] += 1


def client_loop(url: str, key: str, model: str, schedule: Schedule, results: Results) -> None:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    job_id, turn = None, 0

    def call(op: str, method: str, path: str, **kw) -> requests.Response | None:
        if schedule.next_slot() is None:
            return None
        started = time.monotonic()
        try:
            response = http.request(method, url + path, timeout=30, **kw)
            if op == "stream":
                _ = response.content  # to the end of the stream
            results.record(op, time.monotonic() - started, response.status_code)
            return response
        except requests.RequestException:
            results.record(op, time.monotonic() - started, 0)
            return None

    while True:
        turn += 1
        body = {"model": model, "prompt": f"load {turn}", "params": {"max_new_tokens": 32}}
        submitted = call("submit", "POST", "/v1/jobs", json=body)
        if submitted is None and schedule.issued >= schedule.total:
            return
        if submitted is not None and submitted.status_code == 202:
            job_id = submitted.json()["id"]
        if job_id is None:
            continue
        if call("poll", "GET", f"/v1/jobs/{job_id}") is None:
            return
        if turn % 5 == 0:
            if call("cancel", "POST", f"/v1/jobs/{job_id}/cancel") is None:
                return
            if call("stream", "GET", f"/v1/jobs/{job_id}/events") is None:
                return
        elif turn % 5 == 1 and call("list", "GET", "/v1/jobs?limit=20") is None:
            return


class ConnectionSampler(threading.Thread):
    """The most connections the API processes held to the database at once, and the most of them idle in an
    open transaction."""

    def __init__(self, admin_url: str, database: str) -> None:
        super().__init__(daemon=True)
        self.admin_url, self.database = admin_url, database
        self.peak = self.peak_idle_in_transaction = 0
        self.stop = threading.Event()

    def run(self) -> None:
        query = (
            "SELECT count(*), count(*) FILTER (WHERE state = 'idle in transaction') FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'canvas-load-api'"
        )
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while not self.stop.wait(0.1):
                total, idle = conn.execute(query, (self.database,)).fetchone()
                self.peak = max(self.peak, total)
                self.peak_idle_in_transaction = max(self.peak_idle_in_transaction, idle)


@contextmanager
def database(admin_url: str) -> Iterator[tuple[str, str]]:
    from shared.db import dispose_engine

    name = f"canvas_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        yield url, name
    finally:
        dispose_engine(url)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def gunicorn(env: dict[str, str], port: int, workers: int) -> Iterator[str]:
    command = [
        str(Path(sys.executable).with_name("gunicorn")),
        "--config",
        str(ROOT / "deploy/gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--access-logfile",
        "/dev/null",
        "api.wsgi:app",
    ]
    # gunicorn's log lines (access lines included, since its logconfig_dict sends them to stderr) go to
    # /dev/null: an unread pipe fills after 64 KiB and then blocks every request thread on its log line.
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            raise RuntimeError("gunicorn did not answer /healthz within 60 s")
        yield url
    finally:
        process.terminate()  # gunicorn lets requests in flight finish for up to its graceful_timeout (30 s)
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            print("gunicorn had not stopped 45 s after SIGTERM; killed", file=sys.stderr)
            process.kill()
            process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: Results, seconds: float, sampler: ConnectionSampler, workers: int) -> None:
    total = sum(len(v) for v in results.latency.values())
    print(f"{total} requests in {seconds:.1f} s: {total / seconds:.0f} requests/s")
    print(f"{'operation':<8} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for op, values in sorted(results.latency.items()):
        ms = [v * 1000 for v in values]
        print(f"{op:<8} {len(ms):>6} {statistics.median(ms):>8.1f} {percentile(ms, 0.99):>8.1f} {max(ms):>8.1f}")
    every = [v * 1000 for values in results.latency.values() for v in values]
    print(f"{'all':<8} {len(every):>6} {statistics.median(every):>8.1f} {percentile(every, 0.99):>8.1f}")
    errors = {
        f"{op} {status or 'no answer'}": n
        for (op, status), n in results.statuses.items()
        if status >= 400 or not status
    }
    print(f"errors: {sum(errors.values())} {errors or ''}")
    pools = POOL_PER_PROCESS * workers
    print(
        f"database connections, peak: {sampler.peak} of {pools} pooled ({workers} processes x {POOL_PER_PROCESS}); "
        f"idle in transaction, peak: {sampler.peak_idle_in_transaction}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tenants", type=int, default=4)
    args = parser.parse_args()

    from shared.db import dispose_engine, session_scope
    from shared.keys import create_key
    from shared.local_redis import free_port
    from shared.migrate import upgrade
    from shared.registry import register_model
    from worker.tiny import make_tiny

    admin = os.environ.get("CANVAS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    with database(admin) as (url, name), tempfile.TemporaryDirectory() as tmp:
        upgrade(url)
        model_dir = make_tiny(Path(tmp) / "tiny", seed=0, canvas_length=32)
        with session_scope(url) as session:
            register_model(session, "tiny", model_dir)
            keys = [create_key(session, f"load {i}", admin=False)[1] for i in range(args.tenants)]
        dispose_engine(url)  # this process's own connections would count as the API's
        env = {
            **os.environ,
            "CANVAS_DATABASE_URL": url,
            "CANVAS_REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11"),
            "CANVAS_RATE_LIMIT_PER_MINUTE": "0",
            "CANVAS_MAX_ACTIVE_JOBS": "0",
            "CANVAS_VAR_DIR": str(Path(tmp) / "var"),
            "CANVAS_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            "PGAPPNAME": "canvas-load-api",  # libpq: the API's connections, told apart in pg_stat_activity
        }
        with gunicorn(env, free_port(), args.workers) as api:
            sampler = ConnectionSampler(admin, name)
            sampler.start()
            schedule, results = Schedule(args.rate, args.seconds), Results()
            clients = [
                threading.Thread(
                    target=client_loop, args=(api, keys[i % len(keys)], "tiny", schedule, results), daemon=True
                )
                for i in range(args.clients)
            ]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            elapsed = time.monotonic() - schedule.start
            sampler.stop.set()
            sampler.join()
        print(
            f"offered: {args.rate:.0f} requests/s for {args.seconds:.0f} s, {args.clients} clients, "
            f"{args.tenants} tenants; API: gunicorn gthread, {args.workers} processes x 64 threads"
        )
        report(results, elapsed, sampler, args.workers)


if __name__ == "__main__":
    main()
