"""The `fine_tune` kind: a training run on the train queue whose result is registered as a model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from shared.contracts import Hyperparameters


class FineTunePlan(BaseModel):
    """What the API recorded for the trainer (the job's `params` column): the base, the data, how to train."""

    model_config = ConfigDict(extra="forbid")
    base_model: str
    training_file: str
    validation_file: str | None = None
    method: Literal["lora", "full"] = "lora"
    hyperparameters: Hyperparameters
    quantization: Literal["none", "8bit", "4bit"] = "none"
    seed: int
    suffix: str | None = None
    examples: int


class FineTuneOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    trained_steps: int
    final_loss: float | None
    eval_loss: float | None


def result_model_name(base: str, suffix: str | None, job_id: str) -> str:
    """The name a fine-tune's result is registered under: `<base>:<suffix or ft>:<job id>`."""
    return f"{base}:{suffix or 'ft'}:{job_id}"
