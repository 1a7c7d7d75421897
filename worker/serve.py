"""`canvas worker serve`: one Celery worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES, and
the supervisor that keeps them running (`run_children`; `canvas worker train` and `webhooks` use it too).

The parent never imports torch, so no CUDA context exists before the children start.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shared.contracts import TRAIN_QUEUE, WEBHOOK_QUEUE, generation_queue
from shared.queue import EXIT_CANNOT_START
from shared.settings import Settings

log = logging.getLogger(__name__)
FIRST_RESTART_SECONDS = 1.0  # a child that died is restarted after this, doubled at each death in a row
MAX_RESTART_SECONDS = 60.0
HEALTHY_SECONDS = 60.0  # a child that ran this long before it died starts again from the first delay


def detect_gpus() -> list[str]:
    """GPU indices from nvidia-smi (not from torch: no CUDA in the parent), or [] without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def parse_gpus(value: str) -> list[str | None]:
    """'0,1' -> ['0', '1']; 'none' -> [None] (one CPU process); 'auto' -> every GPU, or the CPU."""
    if value == "none":
        return [None]
    if value == "auto":
        return list(detect_gpus()) or [None]
    gpus = [g.strip() for g in value.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise SystemExit(f"--gpus must be 'auto', 'none' or a list like 0,1 (got {value!r})")
    return list(gpus)


def worker_command(models: Sequence[str], gpu: str | None, loglevel: str = "INFO", node: str = "") -> list[str]:
    """Celery with a thread pool as wide as the engine: each slot holds one job (late ack, prefetch 1),
    and the engine batches them. `node` tells apart several workers of one device."""
    queues = ",".join(generation_queue(m) for m in models)
    name = (f"gpu{gpu}" if gpu is not None else "cpu") + (f"-{node}" if node else "") + "@%h"
    slots = Settings.from_env().engine_max_rows
    return [*celery("worker.celery_app:app"), "worker", "--pool", "threads",
            "--concurrency", str(slots), "-Q", queues, "-n", name, "--without-gossip", "--without-mingle",
            "-l", loglevel]  # fmt: skip


def celery(app: str) -> list[str]:
    """`celery -A app`; with CANVAS_LOG_FORMAT=json without its banner (text on stdout), so what a worker
    writes is its log lines (stderr)."""
    quiet = ["--quiet"] if Settings.from_env().log_format == "json" else []
    return [sys.executable, "-m", "celery", "-A", app, *quiet]


def worker_env(models: Sequence[str], gpu: str | None, metrics_port: int = 0) -> dict[str, str]:
    env = child_env(gpu, metrics_port)
    env["CANVAS_WORKER_MODELS"] = ",".join(models)
    return env


def child_env(gpu: str | None, metrics_port: int = 0) -> dict[str, str]:
    """This process's environment for a child pinned to `gpu` (None: the CPU), serving its metrics on
    `metrics_port` (0: none)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu if gpu is not None else "")
    env["CANVAS_METRICS_PORT"] = str(metrics_port)
    return env


def metrics_ports(count: int) -> list[int]:
    """CANVAS_METRICS_PORT + i for the i-th of `count` children (all 0 when it is not set)."""
    port = Settings.from_env().metrics_port
    return [port + i if port > 0 else 0 for i in range(count)]


def serve(models: Sequence[str], gpus: str, loglevel: str = "INFO") -> int:
    """Start the workers and keep them running; SIGTERM/SIGINT are passed on for a warm shutdown."""
    if not models:
        raise SystemExit("--models names at least one model (see: canvas models list)")
    devices = parse_gpus(gpus)
    return run_children(
        [
            (worker_command(models, gpu, loglevel), worker_env(models, gpu, port))
            for gpu, port in zip(devices, metrics_ports(len(devices)), strict=True)
        ]
    )


@dataclass
class Child:
    """One supervised worker process, and when it is due to start again after it died."""

    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = FIRST_RESTART_SECONDS
    restart_at: float | None = None

    def start(self) -> None:
        self.process, self.started, self.restart_at = (
            subprocess.Popen(self.command, env=self.env),
            time.monotonic(),
            None,
        )

    @property
    def name(self) -> str:
        return self.command[self.command.index("-n") + 1] if "-n" in self.command else self.command[-1]

    def reap(self) -> int | None:
        """The exit code if the process has just ended (it is then forgotten), else None."""
        code = self.process.poll() if self.process is not None else None
        if code is not None:
            self.process = None
            return exit_status(code)
        return None


def run_children(commands: Sequence[tuple[list[str], dict[str, str]]], poll_seconds: float = 0.2) -> int:
    """Start each (command, environment) and keep it running: a child that dies is started again after a
    delay that doubles while it keeps dying (1 s up to 60 s). SIGTERM and SIGINT are passed on as SIGTERM,
    a warm shutdown (a terminal's Ctrl-C reaches the children too, and Celery takes a second SIGINT as a
    cold one); once every child has stopped, returns the worst exit code. A child that cannot start
    (EXIT_CANNOT_START: its model does not load) is not restarted: the others are stopped and its code
    returned, so the orchestrator restarts or reports the whole worker."""
    children = [Child(cmd, env) for cmd, env in commands]
    for child in children:
        child.start()
    stop: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stop.append(signum)
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stop:
        for child in children:
            if (code := child.reap()) is not None:
                if code == EXIT_CANNOT_START:
                    log.error("worker %s cannot start (see its log above): stopping the others", child.name)
                    forward(signal.SIGTERM, None)
                    return max(_wait_all(children), code)
                _schedule_restart(child, code)
            elif child.process is None and child.restart_at is not None and time.monotonic() >= child.restart_at:
                child.start()
        time.sleep(poll_seconds)
    return _wait_all(children)


def _schedule_restart(child: Child, code: int) -> None:
    ran = time.monotonic() - child.started
    if ran >= HEALTHY_SECONDS:
        child.delay = FIRST_RESTART_SECONDS
    log.warning(
        "worker %s exited with code %d after %.0f s: restarting it in %.0f s", child.name, code, ran, child.delay
    )
    child.restart_at = time.monotonic() + child.delay
    child.delay = min(2 * child.delay, MAX_RESTART_SECONDS)


def _wait_all(children: list[Child]) -> int:
    """Wait for every running child; the worst code of those that ended now (0 when none had to)."""
    codes = [exit_status(child.process.wait()) for child in children if child.process is not None]
    return max(codes, default=0)


def exit_status(returncode: int) -> int:
    """Popen's return code as a shell reports it: killed by signal N is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def webhook_worker_command(concurrency: int = 8, loglevel: str = "INFO") -> list[str]:
    """The webhook worker: many threads, since deliveries wait on the network, not on a GPU."""
    return [*celery("worker.webhook_app:app"), "worker", "--pool", "threads",
            "--concurrency", str(concurrency), "-Q", WEBHOOK_QUEUE, "-n", "webhooks@%h", "--without-gossip",
            "--without-mingle", "-l", loglevel]  # fmt: skip


def serve_webhooks(concurrency: int, loglevel: str = "INFO") -> int:
    return run_children([(webhook_worker_command(concurrency, loglevel), child_env(None, metrics_ports(1)[0]))])


def train_command(gpu: str | None, loglevel: str = "INFO") -> list[str]:
    name = f"train-gpu{gpu}@%h" if gpu is not None else "train-cpu@%h"
    return [*celery("worker.train_app:app"), "worker", "--pool", "solo",
            "-Q", TRAIN_QUEUE, "-n", name, "--without-gossip", "--without-mingle", "-l", loglevel]  # fmt: skip


def serve_train(gpus: str, loglevel: str = "INFO") -> int:
    """One training process per GPU (or one on the CPU), each taking one fine-tune at a time."""
    devices = parse_gpus(gpus)
    return run_children(
        [
            (train_command(gpu, loglevel), child_env(gpu, port))
            for gpu, port in zip(devices, metrics_ports(len(devices)), strict=True)
        ]
    )
