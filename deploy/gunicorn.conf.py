"""gunicorn's settings for the API image: `gunicorn --config deploy/gunicorn.conf.py api.wsgi:app`.

gthread workers: each request holds a thread, not a process. Waiting and streaming requests hold theirs for
long: at most CANVAS_MAX_LONG_REQUESTS (48) of the 64 per process, so short requests and health checks
always find one. GUNICORN_CMD_ARGS overrides any of these (e.g. "--workers 4").

Logging: gunicorn's own lines (the master's, each worker's errors, every access line) go to stderr in
CANVAS_LOG_FORMAT at CANVAS_LOG_LEVEL, like the app's (`shared.logs.gunicorn_logconfig`): in json, one
object per line with time, level, logger and message, and an access line's request as `http` fields.

Prometheus' multiprocess mode: when PROMETHEUS_MULTIPROC_DIR is set, every worker process writes its
metrics there and /metrics sums them; the directory is emptied when gunicorn starts (a restarted container
must not count its previous life twice) and a dead worker's live gauges are dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.logs import gunicorn_logconfig
from shared.settings import Settings

_settings = Settings.from_env()
bind = "0.0.0.0:8000"
worker_class = "gthread"
workers = 2
threads = 64
graceful_timeout = 30  # SIGTERM: finish the requests in flight, then stop (Kubernetes waits longer)
timeout = 120  # a worker silent this long is restarted (long requests run on threads and do not block it)
keepalive = 5
worker_tmp_dir = "/dev/shm"  # worker heartbeats in memory, not on a container's (maybe read-only) disk
control_socket_disable = True  # gunicorn 27's control socket would go under $HOME, read-only in the images
accesslog = "-"
logconfig_dict = gunicorn_logconfig(_settings.log_format, _settings.log_level)


def on_starting(server: object) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()


def child_exit(server: object, worker: object) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
