"""The catalog of why a job failed: stable codes that clients read in a job's `error.type` (and in
`job.failed` webhooks), each with what it means. Workers raise `JobError(code, message)`; nothing else
reaches a client, so a Python class name never does. docs/errors.md lists the same table for users."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class JobErrorCode(StrEnum):
    MODEL_NOT_LOADED = "model_not_loaded"  # no worker on the job's queue holds its model
    ADAPTER_NOT_LOADED = "adapter_not_loaded"  # the fine-tuned adapter's files could not be loaded
    MODEL_LOAD_FAILED = "model_load_failed"  # a fine-tuned model's files could not be loaded on demand
    MODEL_TOO_LARGE = "model_too_large"  # larger than the worker's memory for on-demand models
    INVALID_PARAMETERS = "invalid_parameters"  # the engine refused the request (a field it cannot run)
    INVALID_TRAINING_DATA = "invalid_training_data"  # a fine-tune's dataset could not be used
    OUT_OF_MEMORY = "out_of_memory"  # the accelerator ran out of memory for this job
    TIMEOUT = "timeout"  # the job ran longer than CANVAS_MAX_JOB_SECONDS
    WORKER_LOST = "worker_lost"  # its worker stopped answering, CANVAS_MAX_ATTEMPTS times
    EXPIRED = "expired"  # not started by its deadline_at
    INTERNAL_ERROR = "internal_error"  # a fault of ours; the message says what, the worker log has more


MEANINGS: dict[JobErrorCode, str] = {
    JobErrorCode.MODEL_NOT_LOADED: "no worker serving the job's queue holds its model; start one for it",
    JobErrorCode.ADAPTER_NOT_LOADED: "the fine-tuned adapter could not be loaded next to its base model",
    JobErrorCode.MODEL_LOAD_FAILED: "the fine-tuned model's files could not be loaded on the worker",
    JobErrorCode.MODEL_TOO_LARGE: "the model or adapter is larger than the worker's memory for on-demand models",
    JobErrorCode.INVALID_PARAMETERS: "the engine cannot run these parameters; the message names the field",
    JobErrorCode.INVALID_TRAINING_DATA: "the fine-tune's dataset could not be used for training",
    JobErrorCode.OUT_OF_MEMORY: "the accelerator ran out of memory; retry with fewer tokens or a smaller batch",
    JobErrorCode.TIMEOUT: "the job ran longer than the service allows (CANVAS_MAX_JOB_SECONDS)",
    JobErrorCode.WORKER_LOST: "the worker running the job stopped answering on every allowed attempt",
    JobErrorCode.EXPIRED: "the job was not started by its deadline (deadline_seconds)",
    JobErrorCode.INTERNAL_ERROR: "a fault in the service; the message says what, and the worker log has more",
}


class JobError(Exception):
    """A job's failure as clients see it: a catalog code and a message."""

    def __init__(self, code: JobErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message[:2000]

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.code.value, "message": self.message}
