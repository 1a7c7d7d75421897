"""Workers that run torch with one intra-op thread each: how the engine uses several CPU cores.

On the CPU a decoder pass is thousands of small ops. Run with N intra-op threads, each op is its own
OpenMP parallel region, and its threads meet at a barrier op after op; from a thread that is not the
process's first (the engine loop's, in a worker), OpenMP also stops spinning between regions once the
process has more OpenMP threads than cores, so every op wakes a sleeping thread. Splitting a pass's rows
into N groups that run side by side, each on one core with one intra-op thread, removes both costs
(bench/engine.py: docs/benchmarks.md). Knows torch's thread settings, nothing of the engine.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

START_TIMEOUT_S = 30.0


def single_threaded_pool(workers: int, name: str = "canvas-cpu") -> ThreadPoolExecutor:
    """`workers` threads, started now, each running torch with one intra-op thread. The calling thread's
    setting, and the default that threads started later take, are left as they were."""
    saved = torch.get_num_threads()
    ready = threading.Barrier(workers + 1, timeout=START_TIMEOUT_S)

    def start() -> None:
        torch.get_num_threads()  # this thread's ATen settings initialise now, from the process defaults
        torch.set_num_threads(1)  # this thread's OpenMP and MKL: one thread (and the default: restored below)
        ready.wait()

    pool = ThreadPoolExecutor(workers, name, initializer=start)
    try:
        for _ in range(workers):  # each submit starts a thread: the ones before wait at the barrier
            pool.submit(lambda: None)
        ready.wait()
    except threading.BrokenBarrierError:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        torch.set_num_threads(saved)  # set_num_threads also set the default of threads started later
    return pool


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` in `parts` consecutive chunks whose sizes differ by at most one (no empty chunk)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        chunks.append(items[start:end])
        start = end
    return chunks
