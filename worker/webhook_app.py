"""The webhook worker's Celery app: `canvas worker webhooks`. CPU only; imports no torch."""

from __future__ import annotations

import os

from celery.signals import worker_ready

from shared.contracts import WEBHOOK_TASK
from shared.queue import make_celery
from shared.settings import Settings
from shared.workers import Heartbeat
from worker import heartbeats
from worker.webhooks import deliver

settings = Settings.from_env()
app = make_celery(settings, "canvas-webhooks")
NAME = f"webhooks-{os.uname().nodename}-{os.getpid()}"
tasks = heartbeats.TaskCounter()


@worker_ready.connect
def start_heartbeat(**_kwargs: object) -> None:
    Heartbeat(settings.redis_url, NAME, heartbeats.webhooks(NAME, tasks)).start()


@app.task(name=WEBHOOK_TASK, acks_late=True, ignore_result=True)
def deliver_webhook(message_id: str) -> str:
    return deliver(settings, message_id)
