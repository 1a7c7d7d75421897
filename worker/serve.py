"""`canvas worker serve`: one Celery worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES.

The parent never imports torch, so no CUDA context exists before the children start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence

from shared.contracts import TRAIN_QUEUE, WEBHOOK_QUEUE, generation_queue
from shared.settings import Settings


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
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "--pool", "threads",
            "--concurrency", str(slots), "-Q", queues, "-n", name, "--without-gossip", "--without-mingle",
            "-l", loglevel]  # fmt: skip


def worker_env(models: Sequence[str], gpu: str | None) -> dict[str, str]:
    env = dict(os.environ, CANVAS_WORKER_MODELS=",".join(models))
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
    return env


def serve(models: Sequence[str], gpus: str, loglevel: str = "INFO") -> int:
    """Start the workers and wait; SIGTERM/SIGINT are passed on for a warm shutdown."""
    if not models:
        raise SystemExit("--models names at least one model (see: canvas models list)")
    return run_children([(worker_command(models, gpu, loglevel), worker_env(models, gpu)) for gpu in parse_gpus(gpus)])


def run_children(commands: Sequence[tuple[list[str], dict[str, str]]]) -> int:
    """Start each (command, environment), pass SIGTERM/SIGINT on for a warm shutdown, wait for all.
    Returns the worst exit code."""
    children = [subprocess.Popen(cmd, env=env) for cmd, env in commands]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max((child.wait() for child in children), default=0)


def webhook_worker_command(concurrency: int = 8, loglevel: str = "INFO") -> list[str]:
    """The webhook worker: many threads, since deliveries wait on the network, not on a GPU."""
    return [sys.executable, "-m", "celery", "-A", "worker.webhook_app:app", "worker", "--pool", "threads",
            "--concurrency", str(concurrency), "-Q", WEBHOOK_QUEUE, "-n", "webhooks@%h", "--without-gossip",
            "--without-mingle", "-l", loglevel]  # fmt: skip


def serve_webhooks(concurrency: int, loglevel: str = "INFO") -> int:
    return run_children([(webhook_worker_command(concurrency, loglevel), dict(os.environ, CUDA_VISIBLE_DEVICES=""))])


def train_command(gpu: str | None, loglevel: str = "INFO") -> list[str]:
    name = f"train-gpu{gpu}@%h" if gpu is not None else "train-cpu@%h"
    return [sys.executable, "-m", "celery", "-A", "worker.train_app:app", "worker", "--pool", "solo",
            "-Q", TRAIN_QUEUE, "-n", name, "--without-gossip", "--without-mingle", "-l", loglevel]  # fmt: skip


def serve_train(gpus: str, loglevel: str = "INFO") -> int:
    """One training process per GPU (or one on the CPU), each taking one fine-tune at a time."""
    return run_children(
        [(train_command(gpu, loglevel), dict(os.environ, CUDA_VISIBLE_DEVICES=gpu or "")) for gpu in parse_gpus(gpus)]
    )
