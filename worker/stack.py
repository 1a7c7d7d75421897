"""The embedded default stack (`canvas up`, `make demo`): SQLite, a private Redis, the API with its sweeper,
a generation worker serving every registered base model (the default one, and any added or quantized with
`canvas models add`), the webhook worker and a fine-tuning worker.

Everything runs as child processes of this one and is stopped on exit, Ctrl-C or SIGTERM: none is left
behind. The private Redis keeps its queues on disk (var/redis), so jobs queued when the stack stopped run
when it starts again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
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
from worker.serve import child_env, train_command, webhook_worker_command, worker_command, worker_env

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
    env: dict[str, str] = field(default_factory=dict)  # what the stack sets in its children's environment
    gpu: str | None = None
    metrics_port: int = 0  # the first worker's (CANVAS_METRICS_PORT), the others' follow it; 0: none

    def serve_new_models(self) -> list[str]:
        """Start a worker for the base models registered since the stack started (`canvas models add`
        while it runs); returns their names. The running worker keeps its models."""
        with session_scope(self.database_url) as session:
            new = [name for name in base_models(session) if name not in self.models]
        if new and self.log_dir is not None:
            command = worker_command(new, self.gpu, node=f"models{len(self.processes)}")
            port = self.metrics_port + len(self.processes) - 1 if self.metrics_port else 0  # after the API's
            env = {**worker_env(new, self.gpu, port), **torch_env(self.gpu, generation_threads()), **self.env}
            self.processes.append(_spawn(command, env, self.log_dir / "worker.log"))
            self.models.extend(new)
            log.info("serving %s as well", ", ".join(new))
        return new


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child process whose output goes to `log_path` (appended), so the console stays readable. In a
    process group of its own: a terminal's Ctrl-C reaches this process only, which stops the children."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)


def torch_env(gpu: str | None, threads: int = 1) -> dict[str, str]:
    """On the CPU: `threads` torch threads (unless OMP_NUM_THREADS says otherwise). The fine-tuning worker
    takes one, as two threads of a training step mostly wait for each other on a busy 2-core machine
    (docs/benchmarks.md, "Torch threads on this VM"); a generation worker takes every core, as its engine
    runs a pass's rows as one group per core, each on one thread (worker/engine/cpu_pool.py)."""
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))} if gpu is None else {}


def generation_threads() -> int:
    """A CPU generation worker's torch threads: the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


def wait_workers_ready(
    settings: Settings, processes: list[subprocess.Popen[bytes]], count: int, timeout: float = 180.0
) -> None:
    """Wait until `count` Celery workers answer a ping (each answers once its start-up is done: a
    generation worker's models are loaded)."""
    app = make_celery(settings, "canvas-stack")
    deadline = time.monotonic() + timeout
    answered: set[str] = set()
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a Canvas process exited during start-up; see its log above")
        answered |= {name for reply in app.control.ping(timeout=0.5) for name in reply}
        if len(answered) >= count:
            return
    raise RuntimeError(f"{len(answered)} of {count} workers answered within {timeout}s")


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
def embedded_stack(port: int | None = None, webhook_allow: str | None = None) -> Iterator[Stack]:
    """Start the whole stack; yields once the API answers and every worker is ready. Stops everything on
    exit, error, Ctrl-C or SIGTERM (which this process then takes as Ctrl-C). `webhook_allow` sets the
    workers' CANVAS_WEBHOOK_ALLOW (the demo lets its webhooks reach its own receiver on 127.0.0.1)."""
    settings = Settings.from_env()
    given = settings.model_fields_set  # the fields the environment set
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    local_redis = None
    processes: list[subprocess.Popen[bytes]] = []
    signals = StopSignals()
    try:
        if "redis_url" not in given:
            local_redis = LocalRedis(settings.var_dir / "redis", persistent=True).start()
            settings = settings.with_(redis_url=local_redis.url)
        if "database_url" not in given:
            settings = settings.with_(database_url=f"sqlite:///{(settings.var_dir / 'canvas.db').resolve()}")
        stack_env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}
        if webhook_allow is not None:
            stack_env["CANVAS_WEBHOOK_ALLOW"] = webhook_allow
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
        processes.append(_spawn(api_cmd, {**os.environ, **stack_env}, logs / "api.log"))
        gpu = _gpu_or_cpu()
        workers = _workers(served, gpu, settings.metrics_port)
        for name, (command, child) in workers.items():
            processes.append(_spawn(command, {**child, **stack_env}, logs / f"{name}.log"))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, processes)
            wait_workers_ready(settings, processes, len(workers))
        except RuntimeError:
            print_log_tails(logs)
            raise
        yield Stack(
            url, admin_key, model, processes, logs, served, settings.database_url, stack_env, gpu, settings.metrics_port
        )
    finally:
        signals.ignore()
        stop_all(processes, grace=settings.shutdown_grace_seconds + 15)  # a generation worker drains first
        if local_redis is not None:
            local_redis.stop()
        signals.restore()


def _workers(served: list[str], gpu: str | None, metrics_port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each worker's (command, environment) by the name of its log: generation, webhooks, fine-tuning.
    With CANVAS_METRICS_PORT set, the first serves its metrics on that port, the next on the next one."""
    ports = [metrics_port + i if metrics_port else 0 for i in range(3)]
    return {
        "worker": (
            worker_command(served, gpu),
            {**worker_env(served, gpu, ports[0]), **torch_env(gpu, generation_threads())},
        ),
        "webhooks": (webhook_worker_command(concurrency=4), child_env(None, ports[1])),
        "train": (train_command(gpu), {**child_env(gpu, ports[2]), **torch_env(gpu)}),
    }


class StopSignals:
    """SIGTERM (a service manager's, `docker stop`'s) taken as Ctrl-C, so the stack stops its children
    before it exits; both ignored while it does; the previous handlers back at the end. Signals reach the
    main thread only: elsewhere (a test's thread) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS} if self.active else {}
        if self.active:
            signal.signal(signal.SIGTERM, self._interrupt)

    @staticmethod
    def _interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    def ignore(self) -> None:
        """While the children stop: a second Ctrl-C or SIGTERM must not cut the clean-up short."""
        for sig in self.previous:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def base_models(session: Session) -> list[str]:
    """The registry's models with weights of their own (adapters and fine-tunes ride on their base's queue)."""
    stmt = select(ModelRecord.name).where(ModelRecord.base_model.is_(None)).order_by(ModelRecord.name)
    return list(session.scalars(stmt))


def _gpu_or_cpu() -> str | None:
    from worker.serve import detect_gpus

    gpus = detect_gpus()
    return gpus[0] if gpus else None
