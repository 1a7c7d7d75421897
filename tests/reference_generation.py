"""The reference the engine is checked against: job parameters as `model.generate()` arguments, and
generate()'s output cut as a job's is. Test-only: serving runs worker/engine/, never generate()."""

from __future__ import annotations

from typing import Any

from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig


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
