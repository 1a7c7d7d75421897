"""One torch intra-op thread for the in-process model tests (`with one_thread(): ...`).

On the suite's small CPU, shared with the e2e tests' worker processes, torch's second thread mostly
waits for the first: a training step of the tiny model measured 25 times slower with two threads than
with one while the machine was busy. A model's results do not depend on the thread count beyond
float summation order, and every test here compares runs made under the same setting."""

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
