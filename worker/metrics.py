"""A worker process's own metrics, read from the outside of what they measure: each engine's rows and the
duration of its ticks, and the memory this process holds on its GPUs. The counters every component
shares are in shared/metrics.py.

The engine knows nothing of metrics: `time_engine_steps` wraps its `step` (each tick of its loop), and the
gauges read `Engine.load` when scraped. torch is imported by the worker that hosts a model, never here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared.metrics import ENGINE_STEP_SECONDS, Gauges, register

if TYPE_CHECKING:
    from worker.host import ModelHost

log = logging.getLogger(__name__)
_hosts: weakref.WeakSet[ModelHost] = weakref.WeakSet()
_registered = threading.Lock()
_installed = False


def time_engine_steps(engine: Any) -> None:
    """Observe canvas_engine_step_seconds for every tick of `engine` that ran rows (a call that found no
    row to run is not a tick: the engine's `stats["ticks"]` tells)."""
    step = getattr(engine, "step", None)
    if step is None or not isinstance(getattr(engine, "stats", None), dict) or getattr(step, "timed", False):
        if step is None:
            log.warning("the engine has no step(): canvas_engine_step_seconds stays empty")
        return

    def timed_step() -> bool:
        ticks, started = engine.stats.get("ticks"), time.perf_counter()
        more = step()
        if engine.stats.get("ticks") != ticks:
            ENGINE_STEP_SECONDS.observe(time.perf_counter() - started)
        return more

    timed_step.timed = True  # type: ignore[attr-defined]
    engine.step = timed_step


def watch_host(host: ModelHost) -> None:
    """Report `host`'s engines in this process's metrics (canvas_engine_rows, canvas_gpu_memory_bytes)."""
    global _installed
    with _registered:
        if not _installed:
            register(Gauges(_read_gauges))
            _installed = True
        _hosts.add(host)


def _read_gauges() -> Iterator[tuple[str, str, list[str], list[tuple[list[str], float]]]]:
    rows: dict[str, float] = {}
    for host in list(_hosts):
        for name, loaded in list(host.models.items()):
            rows[name] = rows.get(name, 0) + loaded.engine.load["running"]
    yield "canvas_engine_rows", "Rows the model's engine denoises now.", ["model"], [([m], v) for m, v in rows.items()]
    yield "canvas_gpu_memory_bytes", "GPU memory this process's allocator holds.", ["gpu"], list(_gpu_memory())


def _gpu_memory() -> Iterator[tuple[list[str], float]]:
    torch = sys.modules.get("torch")  # a process without torch has no GPU memory to report
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    for index in range(torch.cuda.device_count()):
        label = visible[index] if index < len(visible) else str(index)  # the host's GPU index, as nvidia-smi
        yield [label], float(torch.cuda.memory_reserved(index))
