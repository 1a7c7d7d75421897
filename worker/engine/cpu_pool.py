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
_settings = threading.Lock()  # one pool's workers at a time change the process default (see below)


def single_threaded_pool(workers: int, name: str = "canvas-cpu") -> ThreadPoolExecutor:
    """`workers` threads, started now, each running torch with one intra-op thread. The calling thread's
    setting is left as it was, and so is the default that threads started later take, except for the
    moment between a worker's change and the caller's restore (torch has one call for both: a thread that
    makes its first torch call in that moment takes one thread)."""
    saved = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, name)
    started = threading.Barrier(workers + 1, timeout=START_TIMEOUT_S)  # busy until all run: no thread reuse
    with _settings:
        try:
            for _ in range(workers):
                set_one = threading.Barrier(2, timeout=START_TIMEOUT_S)
                pool.submit(_one_thread, set_one, started)
                set_one.wait()  # the new worker has set its own setting (and the default) to one
                torch.set_num_threads(saved)  # the default back, at once
            started.wait()
        except threading.BrokenBarrierError:
            started.abort()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            torch.set_num_threads(saved)
    return pool


def _one_thread(set_one: threading.Barrier, started: threading.Barrier) -> None:
    """A new worker's first task: its torch settings initialise from the process default, then become one
    thread; it stays busy until every worker has started, so each task of the pool's start gets its own."""
    torch.get_num_threads()  # this thread's ATen settings initialise now, from the process default
    torch.set_num_threads(1)  # this thread's OpenMP and MKL: one thread (and the default, until restored)
    set_one.wait()
    started.wait()


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
