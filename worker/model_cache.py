"""The memory budget of what a worker loads on demand (fine-tuned models and LoRA adapters): byte sizes,
users, least-recently-used eviction. It knows nothing of torch: an entry is a key, its bytes and a
function that unloads it. An entry with users (a running job) is never evicted; room that only
in-use entries could make is waited for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class TooLarge(Exception):
    """What is to be loaded is larger than the whole budget."""


class Interrupted(Exception):
    """Waiting for room was given up (the job must stop)."""


@dataclass
class Entry:
    key: str
    bytes: int
    unload: Callable[[], None]
    users: int = 0
    last_used: float = 0.0


class ModelCache:
    """Entries by key within `budget()` bytes (asked for on first need: a GPU's free memory is only known
    once its base model is loaded)."""

    def __init__(self, budget: Callable[[], int]) -> None:
        self._budget_of = budget
        self._budget: int | None = None
        self.entries: dict[str, Entry] = {}
        self._changed = threading.Condition()

    @property
    def budget(self) -> int:
        if self._budget is None:
            self._budget = self._budget_of()
        return self._budget

    @property
    def used(self) -> int:
        return sum(e.bytes for e in self.entries.values())

    def acquire(self, key: str) -> bool:
        """Count a user of `key` if it is loaded; whether it is."""
        with self._changed:
            entry = self.entries.get(key)
            if entry is None:
                return False
            entry.users += 1
            entry.last_used = time.monotonic()
            return True

    def release(self, key: str) -> None:
        with self._changed:
            entry = self.entries.get(key)
            if entry is not None:
                entry.users = max(0, entry.users - 1)
                entry.last_used = time.monotonic()
            self._changed.notify_all()

    def add(self, key: str, size: int, unload: Callable[[], None]) -> None:
        """A loaded entry with one user (its loader); then idle entries are evicted, least recently used
        first, should its real size have passed the budget."""
        with self._changed:
            self.entries[key] = Entry(key, size, unload, users=1, last_used=time.monotonic())
        self._evict(self._idle_victims(0))

    def make_room(self, size: int, should_stop: Callable[[], bool], poll: float = 0.1) -> None:
        """Evict idle entries, least recently used first, until `size` more bytes fit; while only entries in
        use stand in the way, wait for their users to finish. Raises TooLarge if `size` exceeds the whole
        budget, Interrupted once `should_stop()`."""
        if size > self.budget:
            raise TooLarge(f"{size} bytes do not fit the budget of {self.budget} bytes")
        while True:
            with self._changed:
                victims = self._idle_victims(size)
                if victims is None:  # not enough even with every idle entry gone: wait for a user to end
                    if should_stop():
                        raise Interrupted("the job stopped while waiting for memory")
                    self._changed.wait(poll)
                    continue
            self._evict(victims)
            return

    def _idle_victims(self, size: int) -> list[Entry] | None:
        """Idle entries to evict (oldest use first) so that `size` more bytes fit, or None if no choice
        of idle entries makes room. Call with the lock held; the victims are removed from the entries."""
        excess = self.used + size - self.budget
        victims = []
        for entry in sorted(self.entries.values(), key=lambda e: e.last_used):
            if excess <= 0:
                break
            if entry.users == 0:
                victims.append(entry)
                excess -= entry.bytes
        if excess > 0:
            return None
        for entry in victims:
            del self.entries[entry.key]
        return victims

    def _evict(self, victims: list[Entry] | None) -> None:
        for entry in victims or []:
            log.info("evicting %s (%d bytes, idle): the memory for on-demand models is full", entry.key, entry.bytes)
            entry.unload()
