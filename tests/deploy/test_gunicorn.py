"""The API image's server as it runs: the real gunicorn with deploy/gunicorn.conf.py and api.wsgi:app. With
CANVAS_LOG_FORMAT=json every line it writes, gunicorn's own (the master's, the worker's, the access lines)
as well as the app's, is one JSON object with the fields of our lines; SIGTERM stops it with status 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from shared.db import dispose_engine
from shared.migrate import upgrade
from tests.deploy.conftest import ROOT

BIN = Path(sys.executable).parent
FIELDS = {"time", "level", "logger", "message"}  # shared.logs.JsonFormatter's, on every line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorns_own_lines_are_json_like_the_apps(deploy_redis: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'canvas.db'}"
    upgrade(url)
    dispose_engine(url)
    port = free_port()
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": url,
        "REDIS_URL": deploy_redis,
        "CANVAS_API_SWEEPER": "0",
        "CANVAS_LOG_FORMAT": "json",
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 1 --threads 4",
    }
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "--config", "deploy/gunicorn.conf.py", "api.wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, server.communicate(timeout=5)[0]
                time.sleep(0.1)
        assert ready.status_code == 200, ready.text
        assert requests.get(f"http://127.0.0.1:{port}/nowhere", timeout=5).status_code == 404
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=40)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # a text line fails here
    assert all(isinstance(line, dict) and line.keys() >= FIELDS for line in lines), output
    errors = [line["message"] for line in lines if line["logger"] == "gunicorn.error"]
    assert any(m.startswith("Starting gunicorn") for m in errors), errors  # the master's
    assert any(m.startswith("Booting worker") for m in errors), errors  # the worker's
    assert any(m.startswith("Shutting down") for m in errors), errors
    access = {line["http"]["path"]: line for line in lines if line["logger"] == "gunicorn.access"}
    assert access.keys() >= {"/readyz", "/nowhere"}, lines
    assert access["/readyz"]["http"]["status"] == 200 and access["/nowhere"]["http"]["status"] == 404
    assert access["/readyz"]["http"]["method"] == "GET" and access["/readyz"]["http"]["duration_ms"] >= 0
    assert "GET /readyz" in access["/readyz"]["message"]  # gunicorn's own access line, as its message
    assert any(line["logger"].startswith("api.") for line in lines)  # and the app's lines alike
