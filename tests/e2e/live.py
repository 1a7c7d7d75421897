"""Helpers for end-to-end tests: a real API server (threaded WSGI over TCP), real Celery workers in this
process, and real worker processes for the tests that kill or restart one."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from celery import Celery
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.exceptions import WorkerShutdown
from celery.signals import task_postrun
from celery.worker import WorkController
from werkzeug.serving import make_server

from api.app import create_app
from shared.contracts import TRAIN_QUEUE, WEBHOOK_QUEUE, generation_queue
from shared.settings import Settings
from worker.celery_app import create_worker_app
from worker.host import ModelHost
from worker.train_app import create_train_app
from worker.webhook_app import create_webhook_app

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "canceled", "expired"}


class ApiServer:
    """The Flask app behind a real HTTP server on a free loopback port, with its sweeper thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings, run_sweeper=True, recover_batches=True)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll: shutdown waits for the loop to look (half a second by default, paid by every test).
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.app.extensions["canvas.sweeper"].stop()
        self.app.extensions["canvas.batch_validator"].stop()


class AppThreadPool(ThreadTaskPool):
    """Celery's thread pool, whose threads run tasks in the worker's own app. Celery looks a task up in the
    thread's current app, and a new thread's is the process's default app: right in a worker process,
    which has one app, wrong in a test process with several apps' workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.options["initargs"][0]  # the worker's app (Celery hands the pool (app, hostname))
        self.executor = ThreadPoolExecutor(max_workers=self.limit, initializer=app.set_current)


class EmbeddedWorker(WorkController):
    """A real Celery worker of `app` on a thread of this process, consuming `queues` with `concurrency`
    threads. Its startup steps (models, heartbeat) run as in a worker process.

    It runs Celery's blocking loop (`use_eventloop=False`): the event loop is one per process (kombu's hub),
    which two workers would share. It stops as a worker process does on SIGTERM (a warm shutdown raised in
    its own loop), but through its consumer, not Celery's shutdown flag, which is global and would stop
    every worker of the process (as `celery.contrib.testing`'s start_worker does).
    """

    def __init__(self, app: Celery, queues: Sequence[str], concurrency: int = 1) -> None:
        self.consuming = threading.Event()
        app.finalize()
        super().__init__(
            app=app,
            hostname=f"{app.main}-{id(app)}@test",
            pool=AppThreadPool,
            concurrency=concurrency,
            queues=list(queues),
            use_eventloop=False,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        self.thread = threading.Thread(target=self._run, name=f"worker-{app.main}", daemon=True)

    def _run(self) -> None:
        self.app.set_current()
        self.start()

    def on_consumer_ready(self, consumer: object) -> None:
        self.consuming.set()

    @staticmethod
    def _shut_down() -> None:
        raise WorkerShutdown()  # what the worker's loop raises on SIGTERM; WorkController.start stops warm

    def __enter__(self) -> EmbeddedWorker:
        self.thread.start()
        while not self.consuming.wait(0.1):
            if not self.thread.is_alive():
                raise RuntimeError(f"worker {self.hostname} did not start (exit code {self.exitcode})")
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.call_soon(self._shut_down)  # run by the worker's loop, within 2 s (its poll timeout)
        self.thread.join(60)  # a warm shutdown waits for running tasks
        assert not self.thread.is_alive(), f"worker {self.hostname} did not stop"


def serving_worker(settings: Settings, host: ModelHost) -> EmbeddedWorker:
    """An in-process generation worker of these settings, serving the models `host` holds."""
    queues = [generation_queue(name) for name in host.models]
    return EmbeddedWorker(create_worker_app(settings, host), queues, settings.engine_max_rows)


def webhook_worker(settings: Settings) -> EmbeddedWorker:
    """An in-process webhook worker, as wide as `canvas worker webhooks --concurrency 4`."""
    return EmbeddedWorker(create_webhook_app(settings), [WEBHOOK_QUEUE], concurrency=4)


def training_worker(settings: Settings) -> EmbeddedWorker:
    """An in-process training worker: one fine-tune at a time."""
    return EmbeddedWorker(create_train_app(settings), [TRAIN_QUEUE], concurrency=1)


class FinishedTasks:
    """The tasks this process's workers finish while it listens: (task name, args, return value)."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, list[Any], Any]] = []
        self.changed = threading.Condition()

    def __enter__(self) -> FinishedTasks:
        task_postrun.connect(self._record, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        task_postrun.disconnect(self._record)

    def _record(self, task: Any, args: Any, retval: Any, **_kwargs: Any) -> None:
        with self.changed:
            self.finished.append((task.name, list(args), retval))
            self.changed.notify_all()

    def wait(self, name: str, args: list[Any], count: int, timeout: float = 60.0) -> list[Any]:
        """The return values of the first `count` runs of task `name` with `args`, once they have finished."""
        with self.changed:
            self.changed.wait_for(lambda: len(self._returned(name, args)) >= count, timeout)
            returned = self._returned(name, args)
        assert len(returned) >= count, f"{name}{args}: {len(returned)} of {count} runs finished in {timeout}s"
        return returned[:count]

    def _returned(self, name: str, args: list[Any]) -> list[Any]:
        return [r for n, a, r in self.finished if (n, a) == (name, args)]


class Worker:
    """`canvas worker serve --gpus none` as a child process, logging to a file (for tests that kill a
    worker or need one in a process of its own)."""

    def __init__(self, settings: Settings, models: str | None, log_path: Path, role: str = "serve") -> None:
        """A generation worker for `models` (role "serve"), or the "webhooks" or "train" worker."""
        self.log_path = log_path
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "worker.cli", "worker"]
        if role == "serve" and models:
            cmd += ["serve", "--gpus", "none", "--models", models]
        elif role == "train":
            cmd += ["train", "--gpus", "none"]
        else:
            cmd += ["webhooks", "--concurrency", "4"]
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (serve and its celery child): a crash, not a shutdown."""
        os.killpg(self.process.pid, 9)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class Client:
    """What a user's code does: HTTP with a bearer key."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    def submit(self, **body: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.url}/v1/jobs", json={"kind": "generate", **body}, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()

    def get(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"{self.url}/v1/jobs/{job_id}", timeout=30).json()

    def cancel(self, job_id: str) -> requests.Response:
        return self.http.post(f"{self.url}/v1/jobs/{job_id}/cancel", timeout=30)

    def wait(self, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {self.get(job_id)['status']} after {timeout}s")
