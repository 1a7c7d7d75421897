"""Exceptions raised while a job runs, as the job error catalog's codes (shared/job_errors.py). Knows the
engine's, torch's and the dataset parser's exceptions; everything it does not know is an internal error,
whose message (never a Python class name) reaches the client."""

from __future__ import annotations

import torch

from shared.datasets import DatasetError
from shared.job_errors import JobError, JobErrorCode
from worker.engine.params import InvalidParams


def job_error_from(exc: BaseException) -> JobError:
    """The catalog entry for an exception that ended a job."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, InvalidParams):
        return JobError(JobErrorCode.INVALID_PARAMETERS, str(exc))
    if isinstance(exc, torch.OutOfMemoryError):
        return JobError(JobErrorCode.OUT_OF_MEMORY, str(exc).splitlines()[0] if str(exc) else "out of memory")
    if isinstance(exc, DatasetError):
        return JobError(JobErrorCode.INVALID_TRAINING_DATA, str(exc))
    return JobError(JobErrorCode.INTERNAL_ERROR, str(exc) or "the worker failed without a message")
