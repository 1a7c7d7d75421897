"""One torch intra-op thread for the in-process model tests (`with one_thread(): ...`).

On a busy 2-core machine torch's second thread mostly waits for the first: a training step of the tiny
model took 25 times as long with two threads as with one (docs/benchmarks.md, "Torch threads on this
VM"). The thread count changes a model's results only through float summation order; a test comparing
two runs makes both on one thread (the killed-worker test gives its worker processes OMP_NUM_THREADS=1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
