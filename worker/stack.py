"""The embedded default stack (`canvas up`, `make demo`): SQLite, a private Redis, one worker serving every
registered base model (the default one, and any added or quantized with `canvas models add`), the API.

Everything runs as child processes of this one and is stopped on exit: none is left behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.keys import create_key
from shared.local_redis import LocalRedis, free_port
from shared.migrate import upgrade
from shared.models import ModelRecord
from shared.queue import make_celery
from shared.registry import register_model
from shared.settings import Settings
from worker.serve import worker_command, worker_env

log = logging.getLogger(__name__)
TINY_MODEL = "canvas-tiny"
DEMO_MODEL = "canvas-demo"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / DEMO_MODEL  # trained by `canvas train demo`


@dataclass
class Stack:
    url: str
    admin_key: str
    model: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path | None = None
    models: list[str] = field(default_factory=list)  # every model the workers serve
    database_url: str = ""
    env: dict[str, str] = field(default_factory=dict)  # the children's environment (Redis and database URLs)
    gpu: str | None = None

    def serve_new_models(self) -> list[str]:
        """Start a worker for the base models registered since the stack started (`canvas models add`
        while it runs); returns their names. The running worker keeps its models."""
        with session_scope(self.database_url) as session:
            new = [name for name in base_models(session) if name not in self.models]
        if new and self.log_dir is not None:
            command = worker_command(new, self.gpu, node=f"models{len(self.processes)}")
            env = {**worker_env(new, self.gpu), **_only(self.env)}
            self.processes.append(_spawn(command, env, self.log_dir / "worker.log"))
            self.models.extend(new)
            log.info("serving %s as well", ", ".join(new))
        return new


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child process whose output goes to `log_path` (appended), so the console stays readable."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def print_log_tails(log_dir: Path, lines: int = 30) -> None:
    for path in sorted(log_dir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last lines of {path} ---", *tail, sep="\n", file=sys.stderr)


def ensure_default_model(settings: Settings) -> tuple[str, Path]:
    """The default model: the shipped demo model (models/canvas-demo) when the checkout has it, else a
    tiny random one made on first use under var/models/canvas-tiny."""
    if (SHIPPED / "config.json").exists():
        return DEMO_MODEL, SHIPPED
    path = settings.var_dir / "models" / TINY_MODEL
    if not (path / "config.json").exists():
        from worker.tiny import make_tiny  # torch: only needed the first time

        log.info("making the tiny default model in %s", path)
        make_tiny(path)
    return TINY_MODEL, path


def wait_healthy(url: str, processes: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a Canvas process exited during start-up; see its log above")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API at {url} did not become healthy within {timeout}s")


def wait_worker_ready(settings: Settings, processes: list[subprocess.Popen[bytes]], timeout: float = 180.0) -> None:
    """Wait until a Celery worker answers a ping (it answers once its models are loaded)."""
    app = make_celery(settings, "canvas-stack")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a Canvas process exited during start-up; see its log above")
        if app.control.ping(timeout=0.5):
            return
    raise RuntimeError(f"no worker answered within {timeout}s")


def stop_all(processes: list[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def embedded_stack(port: int | None = None) -> Iterator[Stack]:
    """Start the whole stack; yields once the API answers. Stops everything on exit, error or not."""
    settings = Settings.from_env()
    given = settings.model_fields_set  # the fields the environment set
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    local_redis = None
    if "redis_url" not in given:
        local_redis = LocalRedis(settings.var_dir / "redis").start()
        settings = settings.with_(redis_url=local_redis.url)
    if "database_url" not in given:
        settings = settings.with_(database_url=f"sqlite:///{(settings.var_dir / 'canvas.db').resolve()}")
    env = dict(os.environ, REDIS_URL=settings.redis_url, DATABASE_URL=settings.database_url)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(settings.database_url)
        model, model_path = ensure_default_model(settings)
        with session_scope(settings.database_url) as session:
            register_model(session, model, model_path)
            _record, admin_key = create_key(session, "embedded admin", admin=True)
            served = base_models(session)
        port = port or free_port()
        logs = settings.var_dir / "logs"
        logs.mkdir(exist_ok=True)
        api_cmd = [sys.executable, "-m", "api.serve", "--host", "127.0.0.1", "--port", str(port)]
        processes.append(_spawn(api_cmd, env, logs / "api.log"))
        gpu = _gpu_or_cpu()
        worker_env_ = {**worker_env(served, gpu), **_only(env)}
        processes.append(_spawn(worker_command(served, gpu), worker_env_, logs / "worker.log"))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, processes)
            wait_worker_ready(settings, processes)
        except RuntimeError:
            print_log_tails(logs)
            raise
        yield Stack(url, admin_key, model, processes, logs, served, settings.database_url, env, gpu)
    finally:
        stop_all(processes)
        if local_redis is not None:
            local_redis.stop()


def base_models(session: Session) -> list[str]:
    """The registry's models with weights of their own (adapters and fine-tunes ride on their base's queue)."""
    stmt = select(ModelRecord.name).where(ModelRecord.base_model.is_(None)).order_by(ModelRecord.name)
    return list(session.scalars(stmt))


def _only(env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in ("REDIS_URL", "DATABASE_URL")}


def _gpu_or_cpu() -> str | None:
    from worker.serve import detect_gpus

    gpus = detect_gpus()
    return gpus[0] if gpus else None
