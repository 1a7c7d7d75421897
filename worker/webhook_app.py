"""The webhook worker's Celery app: `canvas worker webhooks`. CPU only; imports no torch.

`create_webhook_app(settings)` builds the app; `celery -A worker.webhook_app:app` gets the environment's.
"""

from __future__ import annotations

import functools
import os

from celery import Celery

from shared.contracts import WEBHOOK_TASK
from shared.queue import at_worker_start, make_celery
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

    @app.task(name=WEBHOOK_TASK, acks_late=True, ignore_result=True, shared=False)
    def deliver_webhook(message_id: str) -> str:
        return deliver(settings, message_id)

    return app


def __getattr__(name: str) -> Celery:
    """`app`: the app of this process's environment, made on first use (for `celery -A`), not at import."""
    if name == "app":
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _app_from_env() -> Celery:
    return create_webhook_app(Settings.from_env())
