"""What each kind of worker says in its heartbeat (shared/workers.py beats it into Redis every few seconds):
its kind, host, device, the models it holds, what it is working on now, and `worker_id`, the name it
writes into the jobs it claims (so the dashboard can sum up what it finished)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.signals import task_postrun, task_prerun

if TYPE_CHECKING:  # the webhook worker imports this module and must not import torch
    from worker.host import ModelHost

Describe = Callable[[], dict[str, Any]]


class TaskCounter:
    """Tasks running in this process now, counted from Celery's task signals."""

    def __init__(self) -> None:
        self.running = 0
        self._lock = threading.Lock()
        task_prerun.connect(self._started, weak=False)
        task_postrun.connect(self._finished, weak=False)

    def _started(self, **_kwargs: Any) -> None:
        with self._lock:
            self.running += 1

    def _finished(self, **_kwargs: Any) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)


def _process(kind: str, worker_id: str) -> dict[str, Any]:
    return {"kind": kind, "host": os.uname().nodename, "pid": os.getpid(), "worker_id": worker_id}


def _device() -> dict[str, Any]:
    import torch  # only workers that have torch describe a device with it

    gpu = torch.cuda.is_available()
    return {"gpu": gpu, "device": torch.cuda.get_device_name() if gpu else "cpu"}


def serving(host: ModelHost) -> Describe:
    """A generation worker: its models (with the adapters loaded next to them) and its engines' rows."""

    def describe() -> dict[str, Any]:
        loaded = list(host.models.values())
        loads = [m.engine.load for m in loaded]
        return {
            **_process("serve", host.hostname),
            **_device(),
            "models": sorted({m.name for m in loaded} | {a for m in loaded for a in m.adapters}),
            "rows_in_flight": sum(load["running"] for load in loads),
            "rows_waiting": sum(load["waiting"] for load in loads),
        }

    return describe


def training(worker_id: str, tasks: TaskCounter) -> Describe:
    def describe() -> dict[str, Any]:
        return {**_process("train", worker_id), **_device(), "models": [], "rows_in_flight": tasks.running}

    return describe


def webhooks(worker_id: str, tasks: TaskCounter) -> Describe:
    def describe() -> dict[str, Any]:
        return {**_process("webhooks", worker_id), "gpu": False, "device": "cpu", "rows_in_flight": tasks.running}

    return describe
