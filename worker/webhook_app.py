"""The webhook worker's Celery app: `canvas worker webhooks`. CPU only; imports no torch."""

from __future__ import annotations

from shared.contracts import WEBHOOK_TASK
from shared.queue import make_celery
from shared.settings import Settings
from worker.webhooks import deliver

settings = Settings.from_env()
app = make_celery(settings, "canvas-webhooks")


@app.task(name=WEBHOOK_TASK, acks_late=True, ignore_result=True)
def deliver_webhook(message_id: str) -> str:
    return deliver(settings, message_id)
