"""The worker's Celery app: one task per job kind, models loaded once when the worker starts.

Start it through `canvas worker serve`, which pins one process per GPU and names the models
(CANVAS_WORKER_MODELS). The thread pool keeps the model in the consuming process (no fork, no CUDA
re-initialisation) and runs as many jobs at once as the engine has rows; each task only waits on the
engine, which batches them. Cancellation is cooperative through the job row.
"""

from __future__ import annotations

import logging
import os

from celery.signals import worker_init, worker_ready

from shared.contracts import GENERATE_TASK
from shared.db import session_scope
from shared.models import ModelRecord
from shared.queue import make_celery
from shared.settings import Settings
from shared.workers import Heartbeat
from worker import heartbeats
from worker.events import EventPublisher
from worker.host import ModelHost, load_model
from worker.tasks import run_generation_job

log = logging.getLogger(__name__)
settings = Settings.from_env()
app = make_celery(settings, "canvas-worker")
host = ModelHost()
events = EventPublisher(settings.redis_url)


@worker_init.connect
def load_models(**_kwargs: object) -> None:
    names = [n for n in os.environ.get("CANVAS_WORKER_MODELS", "").split(",") if n]
    with session_scope(settings.database_url) as session:
        records = {n: session.get(ModelRecord, n) for n in names}
    missing = [n for n, r in records.items() if r is None]
    if missing:
        raise RuntimeError(f"models not in the registry: {', '.join(missing)} (add them: canvas models add)")
    for name, record in records.items():
        assert record is not None
        host.add(
            load_model(
                name,
                record.path,
                record.eos_token_ids,
                max_rows=settings.engine_max_rows,
                memory_bytes=settings.engine_memory_bytes,
            )
        )
    events.start()


@worker_ready.connect
def start_heartbeat(**_kwargs: object) -> None:
    """Beat once the models are loaded: the dashboard shows this worker, its models and its rows."""
    name = f"serve-{os.uname().nodename}-{os.getpid()}"
    Heartbeat(settings.redis_url, name, heartbeats.serving(host)).start()


@app.task(name=GENERATE_TASK, acks_late=True, ignore_result=True)
def generate(job_id: str) -> str:
    return run_generation_job(settings, host, job_id, events)
