"""The bodies of the Celery tasks: each builds the worker's runtime and hands the job to the one
lifecycle (worker/lifecycle.py), which dispatches on the job's kind. Thin on purpose."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings
from worker.events import EventPublisher
from worker.host import ModelHost
from worker.job_kinds import executor_for
from worker.lifecycle import WorkerRuntime, run_job
from worker.shutdown import Drain


def run_generation_job(
    settings: Settings, host: ModelHost, job_id: str, events: EventPublisher | None = None, drain: Drain | None = None
) -> str:
    """A generation job (generate, infill, sudoku) on this serving worker's models."""
    return run_job(WorkerRuntime(settings, host.hostname, host=host, events=events, drain=drain), job_id, executor_for)


def run_fine_tune_job(
    settings: Settings, job_id: str, worker_name: str, redis_client: Any = None, drain: Drain | None = None
) -> str:
    """A fine-tune on this training worker; `redis_client` carries its live metrics events."""
    return run_job(WorkerRuntime(settings, worker_name, redis=redis_client, drain=drain), job_id, executor_for)
