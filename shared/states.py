"""The job lifecycle: statuses and the transitions between them (DESIGN.md section 4)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELING = "canceling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}
)

# to-status -> the statuses it may be entered from. A reaped job goes back from running to queued.
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELING: frozenset({JobStatus.RUNNING}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELING}),
    JobStatus.CANCELED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELING}),
    JobStatus.EXPIRED: frozenset({JobStatus.QUEUED}),
}


class FinishReason(StrEnum):
    EOS = "eos"
    LENGTH = "length"
    STOP = "stop"
    CANCELED = "canceled"
