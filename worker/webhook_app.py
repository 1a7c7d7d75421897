"""The webhook worker's Celery app: `canvas worker webhooks`. CPU only; imports no torch.

`create_webhook_app(settings)` builds the app; `celery -A worker.webhook_app:app` gets the environment's.
"""

from __future__ import annotations

import os

from celery import Celery

from shared.contracts import WEBHOOK_TASK
from shared.queue import RETRY_CLAIM, app_from_env, at_worker_start, make_celery
from shared.settings import Settings
from shared.workers import Heartbeat, WorkerServices
from worker import heartbeats
from worker.webhooks import deliver


def create_webhook_app(settings: Settings) -> Celery:
    """A Celery app that delivers webhook messages; its worker beats a heartbeat once it starts."""
    app = make_celery(settings, "canvas-webhooks")
    name = f"webhooks-{os.uname().nodename}-{os.getpid()}"
    tasks = heartbeats.TaskCounter()

    services = WorkerServices(settings.metrics_port)

    def start() -> None:
        services.start(Heartbeat(settings.redis_url, name, heartbeats.webhooks(name, tasks)))

    at_worker_start(app, "webhooks", start, services.stop)

    @app.task(name=WEBHOOK_TASK, acks_late=True, ignore_result=True, shared=False, **RETRY_CLAIM)
    def deliver_webhook(message_id: str) -> str:
        return deliver(settings, message_id)

    return app


__getattr__ = app_from_env(__name__, create_webhook_app)
