"""The training worker's Celery app: `canvas worker train --gpus ...`, one fine-tune at a time per GPU.

The solo pool runs the job in the consuming process; a heartbeat tells the API whether a GPU is here
(quantized fine-tunes need one). Cancellation and leases work through the job row, as for generation; on
SIGTERM the running fine-tune goes back to the queue at its next step.
`create_train_app(settings)` builds the app; `celery -A worker.train_app:app` gets the environment's.
"""

from __future__ import annotations

import os

import redis
from celery import Celery
from celery.signals import worker_shutting_down

from shared.contracts import TRAIN_TASK
from shared.queue import RETRY_CLAIM, app_from_env, at_worker_start, make_celery
from shared.settings import Settings
from shared.workers import Heartbeat, WorkerServices
from worker import heartbeats
from worker.shutdown import Drain
from worker.tasks import run_fine_tune_job


def create_train_app(settings: Settings) -> Celery:
    """A Celery app that runs fine-tuning jobs; its worker beats a heartbeat once it starts."""
    app = make_celery(settings, "canvas-train")
    name = f"train-{os.uname().nodename}-{os.getpid()}"
    tasks = heartbeats.TaskCounter()
    events = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    services = WorkerServices(settings.metrics_port)
    # SIGTERM: the running fine-tune stops at its next step and goes back to the queue, its attempt not
    # spent; the next worker resumes it from its last checkpoint. The solo pool runs the job in the main
    # thread, so the shutdown's first sign is Celery's signal, sent from its signal handler.
    drain = Drain(grace_seconds=0.0)
    worker_shutting_down.connect(lambda **_kwargs: drain.requeue.set(), weak=False)

    def start() -> None:
        services.start(Heartbeat(settings.redis_url, name, heartbeats.training(name, tasks)))

    at_worker_start(app, "training", start, services.stop)

    @app.task(name=TRAIN_TASK, acks_late=True, ignore_result=True, shared=False, **RETRY_CLAIM)
    def fine_tune(job_id: str) -> str:
        return run_fine_tune_job(settings, job_id, name, events, drain)

    return app


__getattr__ = app_from_env(__name__, create_train_app)
