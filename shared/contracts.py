"""Contracts between the API and the workers: task names, queues, and generation parameters."""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationInfo, field_validator, model_validator

GENERATE_TASK = "canvas.generate"
TRAIN_TASK = "canvas.fine_tune"
TRAIN_QUEUE = "train"  # fine-tuning jobs, one at a time per training GPU
WEBHOOK_TASK = "canvas.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"  # its own CPU queue and worker: never a GPU worker
PRIORITY_MIN, PRIORITY_MAX = -10, 10  # a job's priority within its tenant (shared/fairness.py)


def generation_queue(model: str) -> str:
    """One queue per model: a worker consumes the queues of the models it has loaded."""
    return f"gen.{model}"


class GenerationParams(BaseModel):
    """Per-job denoising parameters. Unknown fields are refused, never silently dropped.

    Defaults are the released model's (reference digest 2.1); `seed` is drawn when absent and recorded,
    so every job can be reproduced.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    max_new_tokens: int = Field(256, ge=1, le=32768)
    max_denoising_steps: int = Field(48, ge=1, le=4096)
    entropy_bound: float = Field(0.1, gt=0.0, le=1000.0)
    t_min: float = Field(0.4, gt=0.0, le=10.0)
    t_max: float = Field(0.8, gt=0.0, le=10.0, validate_default=True)
    stability_threshold: int = Field(1, ge=1, le=4096)
    confidence_threshold: float = Field(0.005, gt=0.0, le=100.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[StrictStr] | None = Field(None, max_length=4)  # the output ends before the first one
    order: Literal["entropy", "left_to_right"] = "entropy"  # left_to_right: one position per step (a baseline)
    # fast: fused passes over the bf16 logits, the same distribution, not generate()'s random stream
    sampler: Literal["exact", "fast"] = "exact"

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: list[str] | None) -> list[str] | None:
        if stop is not None and not all(0 < len(s) <= 64 for s in stop):
            raise ValueError("each stop sequence must have 1 to 64 characters")
        return stop

    @model_validator(mode="before")
    @classmethod
    def _ints_are_floats(cls, data: object) -> object:
        # Strict mode keeps "1" from becoming 1, but JSON clients write 1 for 1.0: accept ints for floats.
        if isinstance(data, dict):
            for name in ("entropy_bound", "t_min", "t_max", "confidence_threshold"):
                value = data.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    data = {**data, name: float(value)}
        return data

    @field_validator("t_max")  # on the default too: {"t_min": 1.5} alone must not reach a worker
    @classmethod
    def _above_t_min(cls, t_max: float, info: ValidationInfo) -> float:
        t_min = info.data.get("t_min")
        if t_min is not None and t_max <= t_min:
            raise ValueError(f"t_max ({t_max}) must be greater than t_min ({t_min})")
        return t_max

    def with_seed(self) -> GenerationParams:
        """These parameters with a seed: the given one, or a fresh random one."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(2**31)})


class Hyperparameters(BaseModel):
    """Fine-tuning hyperparameters; `epochs` or `max_steps` (steps win when both are given)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    epochs: int | None = Field(None, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, le=1_000_000)
    learning_rate: float = Field(1.5e-4, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=512)
    lora_rank: int = Field(16, ge=1, le=512)
    lora_alpha: float = Field(32.0, gt=0.0, le=4096.0)
    warmup_steps: int = Field(25, ge=0, le=100_000)
    checkpoint_every: int = Field(50, ge=1, le=1_000_000)

    @model_validator(mode="before")
    @classmethod
    def _ints_are_floats(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in ("learning_rate", "lora_alpha"):
                value = data.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    data = {**data, name: float(value)}
        return data
