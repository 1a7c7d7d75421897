"""The broker side shared by API and workers: the Celery app factory and the publish of one outbox message
(shared/fairness.py decides which and when).

The API publishes by task name through this module and never imports worker code.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from celery.signals import celeryd_init, setup_logging

from shared.logs import configure_logging
from shared.models import OutboxMessage
from shared.settings import Settings
from shared.webhook_wake import install as install_webhook_wakes

log = logging.getLogger(__name__)
# How a worker that cannot start (its models do not load) exits: sysexits' EX_CONFIG. Its supervisor
# (`canvas worker serve`) gives up at once on this code instead of restarting it.
EXIT_CANNOT_START = 78


class ClaimFailed(Exception):
    """The database did not answer a task's claim (of a job, or of a webhook message). The task retries
    (RETRY_CLAIM) instead of ending: acked, the delivery would be lost (a job would stay queued; a webhook
    message would wait out its dispatch grace)."""


# Options of every task that claims: a delivery whose claim failed is sent again after 1, 2, 4, 8, then
# every 10 s, for as long as the database stays down (Celery's autoretry: a new message, then the ack).
RETRY_CLAIM: dict[str, Any] = {
    "autoretry_for": (ClaimFailed,),
    "retry_backoff": 1,
    "retry_backoff_max": 10,
    "retry_jitter": False,
    "max_retries": None,
}


def make_celery(
    settings: Settings, name: str = "canvas", *, set_as_current: bool = True, publish_only: bool = False
) -> Celery:
    """A Celery app configured for long GPU jobs: late acks, prefetch 1, a long visibility timeout. Without
    `set_as_current` it does not become the calling thread's current app (a worker's pool thread looks up
    the tasks it runs in its current app). A `publish_only` app (the API's, the sweeper's, a worker's
    producer) also gives up a read after publish_timeout_seconds: a broker that accepts the connection but
    never answers (paused for a failover, a proxy whose backend is gone) would otherwise hold a release
    pass, and the per-queue lock it holds (shared/fairness.py), forever."""
    app = Celery(name, broker=settings.redis_url, set_as_current=set_as_current)
    install_webhook_wakes(settings.redis_url)  # every process that has an app may write webhook messages
    transport = {
        # Longer than the longest job, or Redis redelivers a running job (celery#5935, pretix#2058).
        "visibility_timeout": settings.max_job_seconds + 3600,
        "socket_connect_timeout": settings.publish_timeout_seconds,
    }
    if publish_only:  # a consumer keeps no read timeout: it waits in BRPOP between jobs
        transport["socket_timeout"] = settings.publish_timeout_seconds
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # the SQL row is the source of truth
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.publish_timeout_seconds,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        # Task events, so Flower (`celery --broker=$REDIS_URL flower`) shows the tasks and their history.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_serializer="json",
        accept_content=["json"],
    )
    _log_like_canvas(settings)
    return app


def _log_like_canvas(settings: Settings) -> None:
    """A Celery worker process logs in CANVAS_LOG_FORMAT: with a receiver of `setup_logging`, Celery leaves
    logging to it (the worker's `-l LEVEL` sets the level). `celeryd_init` comes earlier, before the
    worker's first warning (running as root)."""

    def configure(loglevel: Any = None, **_kwargs: Any) -> None:
        configure_logging(loglevel or settings.log_level, settings.log_format)

    for signal in (celeryd_init, setup_logging):  # once a process, by the first app made in it
        signal.connect(configure, weak=False, dispatch_uid=f"canvas.logging.{signal.name}")


def at_worker_start(app: Celery, name: str, start: Callable[[], None], stop: Callable[[], None] | None = None) -> None:
    """Run `start` when a worker of `app` starts, before it takes a task, and `stop` when it shuts down,
    after it stopped taking tasks and while the running ones still run. If `start` raises, the worker does
    not start: it logs why and exits with EXIT_CANNOT_START, never having consumed its queues.

    A boot step of this app, not a `worker_init`/`worker_ready` signal handler: signals reach every app in
    the process, and `worker_ready` is sent by the command-line worker only, not by an embedded one.
    """

    def start_step(_self: Any, _worker: Any) -> None:
        try:
            start()
        except Exception as exc:
            log.critical("the worker cannot start: %s", exc, exc_info=True)
            raise SystemExit(EXIT_CANNOT_START) from exc

    def stop_step(_self: Any, _worker: Any) -> None:
        if stop is not None:
            stop()

    step = type(
        name,
        (bootsteps.StartStopStep,),
        # After the pool (so it stops before the pool waits for the running tasks) and before the Consumer
        # step, which Celery starts last and stops first.
        {"name": f"canvas.{name}", "requires": ("celery.worker.components:Pool",), "start": start_step,
         "stop": stop_step},
    )  # fmt: skip
    app.steps["worker"].add(step)


def publish(app: Celery, message: OutboxMessage) -> None:
    """Send one outbox message to its queue; raises if the broker cannot be reached."""
    app.send_task(
        message.task_name,
        args=[message.job_id],
        queue=message.queue,
        task_id=f"{message.job_id}.{message.id}",
        retry=False,
    )


@functools.cache
def producer(settings: Settings) -> Celery:
    """This process's Celery app for publishing with `settings` (made once: a worker publishes on every
    claim and finish). It never becomes a thread's current app: made in a worker's pool thread, it would
    hide the worker's tasks from that thread."""
    return make_celery(settings, "canvas-producer", set_as_current=False, publish_only=True)


def app_from_env(module: str, factory: Callable[[Settings], Celery]) -> Callable[[str], Celery]:
    """A module `__getattr__` that gives `app`: the app of this process's environment, made by `factory` on
    first use (for `celery -A module:app`), not at import."""
    build = functools.cache(lambda: factory(Settings.from_env()))

    def __getattr__(name: str) -> Celery:
        if name == "app":
            return build()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
