"""The generation worker's Celery app: one task per job kind, models loaded once when the worker starts.

Start it through `canvas worker serve`, which pins one process per GPU and names the models
(CANVAS_WORKER_MODELS). The thread pool keeps the model in the consuming process (no fork, no CUDA
re-initialisation) and runs as many jobs at once as the engine has rows; each task only waits on the
engine, which batches them. Cancellation is cooperative through the job row.

`create_worker_app(settings)` builds the app; nothing is built at import. `celery -A worker.celery_app:app`
(how `canvas worker serve` starts each child) gets the app of this process's environment.
"""

from __future__ import annotations

import os

from celery import Celery

from shared.contracts import GENERATE_TASK
from shared.db import session_scope
from shared.models import ModelRecord
from shared.queue import RETRY_CLAIM, app_from_env, at_worker_start, make_celery
from shared.settings import Settings
from shared.workers import Heartbeat, WorkerServices
from worker import heartbeats
from worker.events import EventPublisher
from worker.host import ModelHost, load_model, pinned_device
from worker.shutdown import Drain
from worker.tasks import run_generation_job


def create_worker_app(settings: Settings, host: ModelHost | None = None) -> Celery:
    """A Celery app that runs generation jobs on `host`'s models.

    Without a host, a worker of the app loads `settings.worker_models` when it starts, before it takes a
    job, and does not start (exit code EXIT_CANNOT_START) if one of them cannot be loaded. With one (tests
    load a model once and share it), the worker serves what the host holds. On shutdown it drains
    (worker/shutdown.py).
    """
    app = make_celery(settings, "canvas-worker")
    models = settings.worker_models if host is None else ()
    host = host or ModelHost(settings.model_cache_bytes)
    events = EventPublisher(settings.redis_url)
    services = WorkerServices(settings.metrics_port)
    drain = Drain(settings.shutdown_grace_seconds)

    def start() -> None:
        load_models(settings, host, models)
        events.start()
        name = f"serve-{os.uname().nodename}-{os.getpid()}"
        services.start(Heartbeat(settings.redis_url, name, heartbeats.serving(host)))

    def stop() -> None:  # Celery stopped consuming: no new job comes
        drain.drain()
        services.stop()

    at_worker_start(app, "serving", start, stop)

    @app.task(name=GENERATE_TASK, acks_late=True, ignore_result=True, shared=False, **RETRY_CLAIM)
    def generate(job_id: str) -> str:
        return run_generation_job(settings, host, job_id, events, drain)

    return app


def load_models(settings: Settings, host: ModelHost, names: tuple[str, ...]) -> None:
    """Load each named model from the registry onto `host`. Raises, naming the reason, if one is not
    registered, or if this worker has no GPU and one is too large for the CPU (check_cpu_fits)."""
    with session_scope(settings.database_url) as session:
        records = {n: session.get(ModelRecord, n) for n in names}
        found = {n: (r.path, list(r.eos_token_ids), r.weight_bytes) for n, r in records.items() if r is not None}
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"models not in the registry: {', '.join(missing)} (add them: canvas models add)")
    if not names:
        return
    device = pinned_device()
    for name, (path, eos_ids, weight_bytes) in found.items():
        check_cpu_fits(name, weight_bytes, device.type, settings.cpu_model_max_bytes)
        loaded = load_model(
            name,
            path,
            eos_ids,
            max_rows=settings.engine_max_rows,
            memory_bytes=settings.engine_memory_bytes,
            max_context=settings.engine_max_context,
            cuda_graphs=settings.engine_cuda_graphs,
        )
        host.add(loaded)


def check_cpu_fits(name: str, weight_bytes: int | None, device: str, limit: int) -> None:
    """Refuse a model too large for the CPU where no GPU was found (the 26B model would load, slowly, and
    answer nothing in time); a limit of 0 allows any."""
    if device == "cpu" and limit > 0 and weight_bytes is not None and weight_bytes > limit:
        raise RuntimeError(
            f"model {name} has {weight_bytes / 2**30:.1f} GiB of weights and this worker has no GPU: it is not "
            f"loaded on the CPU (CANVAS_CPU_MODEL_MAX_BYTES={limit}); give the worker a GPU or raise the limit"
        )


__getattr__ = app_from_env(__name__, create_worker_app)
