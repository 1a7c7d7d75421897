"""Admission: which waiting requests join the running batch, under a row limit and a memory budget.

Plain Python over request sizes; it knows nothing of tensors. Requests are admitted in arrival order
(no overtaking), so a large request is never starved by small ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Waiting(Generic[T]):
    item: T
    cost: int


class Scheduler(Generic[T]):
    """FIFO queue with admission under `max_rows` and `budget_bytes`."""

    def __init__(self, max_rows: int, budget_bytes: int | None) -> None:
        self.max_rows, self.budget_bytes = max_rows, budget_bytes
        self.waiting: deque[Waiting[T]] = deque()
        self.used_bytes = 0
        self.rows = 0

    def add(self, item: T, cost: int) -> None:
        self.waiting.append(Waiting(item, cost))

    def admit(self) -> list[T]:
        admitted = []
        while self.waiting and self.rows < self.max_rows:
            head = self.waiting[0]
            over_budget = self.budget_bytes is not None and self.used_bytes + head.cost > self.budget_bytes
            if over_budget and self.rows > 0:  # one row is always allowed, or a large request would wait forever
                break
            self.waiting.popleft()
            self.rows += 1
            self.used_bytes += head.cost
            admitted.append(head.item)
        return admitted

    def release(self, cost: int) -> None:
        self.rows -= 1
        self.used_bytes -= cost

    def remove_waiting(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take out the waiting items that match (canceled before they started)."""
        removed = [w.item for w in self.waiting if predicate(w.item)]
        self.waiting = deque(w for w in self.waiting if not predicate(w.item))
        return removed
