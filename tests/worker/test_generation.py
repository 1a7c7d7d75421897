"""The worker's generation path against transformers' own `model.generate()` on a tiny model."""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from shared.contracts import GenerationParams
from worker.generation import GenerationCanceled, cut_output, generate_kwargs, generate_one
from worker.tiny import EOS_ID


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


PARAM_SETS = [
    {"max_new_tokens": 20, "seed": 1},
    {"max_new_tokens": 70, "max_denoising_steps": 8, "entropy_bound": 2.0, "seed": 7},
    {
        "max_new_tokens": 32,
        "t_min": 0.1,
        "t_max": 0.2,
        "stability_threshold": 3,
        "confidence_threshold": 0.5,
        "seed": 3,
    },
]


@pytest.mark.parametrize("raw", PARAM_SETS)
def test_output_equals_model_generate_with_the_same_seed(model, raw) -> None:
    params = GenerationParams.model_validate(raw).model_dump()
    prompt = [2, 80, 81, 82, 83, 84]
    result = generate_one(model, prompt, params, {EOS_ID})
    torch.manual_seed(params["seed"])
    with torch.inference_mode():
        direct = model.generate(torch.tensor([prompt]), **generate_kwargs(params))
    expected, reason = cut_output(direct.sequences[0, len(prompt) :].tolist(), params["max_new_tokens"], {EOS_ID})
    assert result.token_ids == expected
    assert result.finish_reason == reason
    assert len(result.token_ids) <= params["max_new_tokens"]
    assert result.canvases == -(-params["max_new_tokens"] // 32) or reason == "eos"
    assert 1 <= result.denoising_steps <= params["max_denoising_steps"] * result.canvases


def test_different_seeds_give_different_outputs(model) -> None:
    base = GenerationParams.model_validate({"max_new_tokens": 32}).model_dump()
    a = generate_one(model, [2, 70], {**base, "seed": 1}, {EOS_ID})
    b = generate_one(model, [2, 70], {**base, "seed": 2}, {EOS_ID})
    assert a.token_ids != b.token_ids


def test_cancel_stops_between_denoising_steps(model) -> None:
    params = GenerationParams.model_validate({"max_new_tokens": 96, "max_denoising_steps": 40, "seed": 1}).model_dump()
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(GenerationCanceled):
        generate_one(model, [2, 70], params, {EOS_ID}, stop_after_three)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("tokens", "limit", "expected"),
    [
        ([5, 6, 1, 7], 10, ([5, 6], "eos")),
        ([5, 6, 7, 8], 3, ([5, 6, 7], "length")),
        ([5, 6, 7, 1], 3, ([5, 6, 7], "length")),
        ([1, 5], 3, ([], "eos")),
    ],
)
def test_output_is_cut_at_eos_and_at_max_new_tokens(tokens, limit, expected) -> None:
    assert cut_output(tokens, limit, {1}) == expected
