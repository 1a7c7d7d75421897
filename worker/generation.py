"""One generation request through transformers' `model.generate()`, with cancel, step counts and cutting.

This is the walking skeleton's path; the batched engine (worker/engine/) replaces it. It knows torch
and transformers, not Celery or the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig


class GenerationCanceled(Exception):
    """Raised inside generate() between denoising steps when the job was asked to stop."""


@dataclass
class GenerationResult:
    token_ids: list[int]
    finish_reason: str  # "eos" | "length"
    denoising_steps: int
    canvases: int
    tokens_per_forward: float


class StepMonitor(BaseStreamer):
    """Counts denoising steps and committed canvases, and stops generation when `should_stop()` says so."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.steps = 0
        self.canvases = -1  # generate() first puts the prompt, then one put per committed canvas

    def put(self, value: torch.Tensor) -> None:
        self.canvases += 1

    def put_draft(self, value: torch.Tensor) -> None:
        self.steps += 1
        if self.should_stop():
            raise GenerationCanceled()

    def end(self) -> None:
        pass


def generate_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Job parameters as `model.generate()` keyword arguments (every one named: none is dropped)."""
    return {
        "max_new_tokens": params["max_new_tokens"],
        "max_denoising_steps": params["max_denoising_steps"],
        "sampler_config": EntropyBoundSamplerConfig(entropy_bound=float(params["entropy_bound"])),
        "t_min": float(params["t_min"]),
        "t_max": float(params["t_max"]),
        "stability_threshold": params["stability_threshold"],
        "confidence_threshold": float(params["confidence_threshold"]),
        "return_dict_in_generate": True,
    }


def cut_output(new_tokens: list[int], max_new_tokens: int, eos_ids: set[int]) -> tuple[list[int], str]:
    """Cut generated ids at the first EOS (reason "eos") or at max_new_tokens (reason "length")."""
    for i, token in enumerate(new_tokens[:max_new_tokens]):
        if token in eos_ids:
            return new_tokens[:i], "eos"
    return new_tokens[:max_new_tokens], "length"


@torch.inference_mode()
def generate_one(
    model: Any,
    input_ids: list[int],
    params: dict[str, Any],
    eos_ids: set[int],
    should_stop: Callable[[], bool] = lambda: False,
) -> GenerationResult:
    """Run one request. Seeds torch's global generator with params["seed"] first (reproducible)."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    monitor = StepMonitor(should_stop)
    torch.manual_seed(int(params["seed"]))
    out = model.generate(ids, streamer=monitor, **generate_kwargs(params))
    new_tokens = out.sequences[0, len(input_ids) :].tolist()
    token_ids, reason = cut_output(new_tokens, params["max_new_tokens"], eos_ids)
    return GenerationResult(
        token_ids=token_ids,
        finish_reason=reason,
        denoising_steps=monitor.steps,
        canvases=max(monitor.canvases, 0),
        tokens_per_forward=round(float(out.tokens_per_forward[0]), 4),
    )
