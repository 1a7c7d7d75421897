"""Helpers for end-to-end tests: a real API server (threaded WSGI over TCP) and real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

from api.app import create_app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "canceled", "expired"}


class ApiServer:
    """The Flask app behind a real HTTP server on a free loopback port, with its sweeper thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings, run_sweeper=True)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.app.extensions["canvas.sweeper"].stop()


class Worker:
    """`canvas worker serve --gpus none` as a child process, logging to a file."""

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
