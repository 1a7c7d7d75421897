"""The training worker's Celery app: `canvas worker train --gpus ...`, one fine-tune at a time per GPU.

The solo pool runs the job in the consuming process; a heartbeat tells the API whether a GPU is here
(quantized fine-tunes need one). Cancellation and leases work through the job row, as for generation.
"""

from __future__ import annotations

import os

import redis
from celery.signals import worker_ready

from shared.contracts import TRAIN_TASK
from shared.queue import make_celery
from shared.settings import Settings
from shared.workers import Heartbeat
from worker import heartbeats
from worker.train_tasks import run_fine_tune_job

settings = Settings.from_env()
app = make_celery(settings, "canvas-train")
NAME = f"train-{os.uname().nodename}-{os.getpid()}"
tasks = heartbeats.TaskCounter()
events = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


@worker_ready.connect
def start_heartbeat(**_kwargs: object) -> None:
    Heartbeat(settings.redis_url, NAME, heartbeats.training(NAME, tasks)).start()


@app.task(name=TRAIN_TASK, acks_late=True, ignore_result=True)
def fine_tune(job_id: str) -> str:
    return run_fine_tune_job(settings, job_id, NAME, events)
