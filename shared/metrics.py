"""Prometheus metrics (prometheus_client): the ones every component counts, and how they are exposed.

Each worker process serves its own on CANVAS_METRICS_PORT (`serve_metrics`); the API serves them at
/metrics (`exposition`), from every gunicorn worker's files when PROMETHEUS_MULTIPROC_DIR is set
(prometheus_client's multiprocess mode). Gauges are read when scraped (collectors), not kept: the depth of
the queues (the API asks Redis), an engine's rows and GPU memory (worker/metrics.py). Labels never name a
job or a tenant (Prometheus' naming rules: no unbounded label values).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_http_server

log = logging.getLogger(__name__)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds a job waits or runs: from a fraction of a second (a short generation) to hours (a fine-tune).
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600)

JOBS_SUBMITTED = Counter("canvas_jobs_submitted", "Jobs accepted by the API.", ["kind", "model"])
JOBS_FINISHED = Counter(
    "canvas_jobs_finished", "Jobs that reached an end state (succeeded, failed, canceled, expired).",
    ["kind", "model", "status"],
)  # fmt: skip
JOB_QUEUE_SECONDS = Histogram(
    "canvas_job_queue_seconds", "Seconds from a job's submission to its first start.", ["kind"], buckets=_SECONDS
)
JOB_RUN_SECONDS = Histogram(
    "canvas_job_run_seconds", "Seconds a job's last attempt ran, start to end.", ["kind"], buckets=_SECONDS
)
ENGINE_STEP_SECONDS = Histogram(
    "canvas_engine_step_seconds", "Seconds of one engine tick (encode and denoise of every row in it).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)  # fmt: skip
TOKENS_PER_FORWARD = Histogram(
    "canvas_tokens_per_forward", "Output tokens per decoder pass of a finished generation request.",
    buckets=(0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32),
)  # fmt: skip
WEBHOOK_DELIVERIES = Counter(
    "canvas_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retrying, failed, skipped, superseded).",
    ["outcome"],
)  # fmt: skip
FINE_TUNE_STEPS = Counter("canvas_fine_tune_steps", "Optimizer steps taken by fine-tuning jobs.")


class Gauges:
    """A collector of gauges computed when scraped: `read()` yields (name, help, labels, samples) where
    samples are (label values, value) pairs. A failing read drops its gauges from that scrape and logs."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str, list[str], Iterable[tuple[list[str], float]]]]]):
        self.read = read

    def describe(self) -> list[Metric]:
        return []  # names are not checked for duplicates: the gauges come and go with what is scraped

    def collect(self) -> Iterator[Metric]:
        try:
            read = list(self.read())
        except Exception as exc:  # a metric source that is down (Redis) must not fail the scrape
            log.warning("metrics: %s", exc)
            return
        for name, help_text, labels, samples in read:
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for values, value in samples:
                family.add_metric(values, value)
            yield family


class _ThisProcess:
    """The default registry as a collector of another registry (the process's own metrics)."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition(*collectors: Any) -> bytes:
    """The text exposition of this process's metrics, or under gunicorn (PROMETHEUS_MULTIPROC_DIR set) of
    every worker process's, with `collectors` (read now) added."""
    registry = CollectorRegistry(auto_describe=True)
    if os.environ.get(MULTIPROCESS_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def register(collector: Any) -> None:
    """Add a collector to this process's registry (what `serve_metrics` and /metrics show)."""
    REGISTRY.register(collector)


def serve_metrics(port: int) -> Callable[[], None]:
    """Serve this process's metrics over HTTP on `port` (every interface, for the scraper) in a thread.
    Returns the function that stops it."""
    server, thread = start_http_server(port, addr="0.0.0.0")
    log.info("metrics on :%d/metrics", port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def mark_process_dead(pid: int) -> None:
    """For gunicorn's `child_exit` hook in multiprocess mode: drop a dead worker's live gauges."""
    if os.environ.get(MULTIPROCESS_ENV):
        multiprocess.mark_process_dead(pid)
