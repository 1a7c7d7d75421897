"""The Trainer learns: it overfits a tiny dataset (full fine-tuning on a tiny random model, LoRA on the
shipped demo model), and the result recalls every training pair exactly through the engine, which the
model before training recalls none of. In-process, seeds fixed.

The thresholds leave a margin, measured over several training seeds on the 2-core CPU VM (2026-11-29;
the figures are in each test). How well a fine-tune learns a larger dataset is measured by
bench/fine_tune.py (docs/benchmarks.md), not here."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.tiny import make_tiny
from worker.training.lora import add_lora
from worker.training.objective import Example
from worker.training.trainer import Trainer, TrainPlan, evaluate, freeze_router

DEMO = Path(__file__).resolve().parents[2] / "models" / "canvas-demo"


def words(count: int) -> list[str]:
    """`count` four-letter words, the same every run (the first of 2 x `count` drawn, in sorted order)."""
    rng = random.Random(7)
    return sorted({"".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(4)) for _ in range(2 * count)})[:count]


def pairs(tokenizer: Any, completions: dict[str, str]) -> list[Example]:
    return [
        Example(tokenizer(f"{w}:").input_ids, tokenizer(c, add_special_tokens=False).input_ids)
        for w, c in completions.items()
    ]


def train(model: Any, examples: list[Example], plan: TrainPlan, tmp_path: Path) -> list[float]:
    """Run the Trainer as a fine-tune job does; the diffusion loss of every step."""
    freeze_router(model)
    losses: list[float] = []
    Trainer(model, examples, plan).run(lambda m: losses.append(m["diffusion_loss"]), lambda *a: None, tmp_path)
    return losses


def recalled(model: Any, examples: list[Example], max_new_tokens: int) -> int:
    """How many completions the model gives exactly, through the engine with the service's defaults."""
    engine = Engine(model.eval(), max_rows=len(examples))
    params = SamplingParams(max_new_tokens=max_new_tokens, seed=1)
    handles = [engine.submit(Request(f"r{i}", tuple(e.prompt), params, frozenset({1}))) for i, e in enumerate(examples)]
    engine.run_until_idle()
    return sum(h.wait(0).token_ids == e.response for h, e in zip(handles, examples, strict=True))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_full_fine_tuning_overfits_eight_pairs(tmp_path) -> None:
    """Eight word -> word pairs on a tiny random model (hidden 128, an 8-token canvas), 200 steps.

    Measured with training seeds 1-10: every seed recalls 8/8 at step 200 (seeds 1-8 also at steps 150 and
    175 of the same runs, having first reached 8/8 at step 75-125). The diffusion loss falls from 4.1-4.3
    (mean of the first 5 steps) to 0.0025-0.06 (last 5): by 69x to 1,700x. The test asks for 8/8 and 20x."""
    directory = make_tiny(tmp_path / "tiny", seed=0, canvas_length=8, hidden=128)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(directory)
    examples = pairs(tokenizer, {w: w for w in words(8)})
    assert recalled(model, examples, 8) == 0

    losses = train(model, examples, TrainPlan(5e-3, 8, 200, 5, 10**9, 1, tokenizer.eos_token_id), tmp_path)
    assert len(losses) == 200
    assert mean(losses[-5:]) < mean(losses[:5]) / 20
    assert recalled(model, examples, 8) == 8


@pytest.mark.skipif(not (DEMO / "config.json").exists(), reason="no shipped demo model")
def test_lora_on_the_demo_model_learns_four_pairs_and_leaves_the_base_untouched(tmp_path) -> None:
    """Four word -> word pairs, LoRA (rank 16, alpha 32) on the shipped demo model, 35 steps of batch 4.

    LoRA on this base needs 60 or more passes over each pair to recall them all exactly (docs/benchmarks.md:
    30/30 after 600 steps of batch 8, 160 passes), more than a test can spend on this CPU (0.8 s a step on
    the slower 2-core VM), so the test asks for a drop of the loss and half the pairs. Measured with
    training seeds 1-4 (2026-11-29, AMD EPYC VM without AVX-512): the Trainer's evaluation loss on the
    pairs fell 7.1x-16.7x, the training loss (first 5 steps against the last 5) 4.9x-13.4x, and 2/4 to 4/4
    were recalled (0/4 before). The test (seed 1: 10x, 13x, 4/4) asks for 5x, 3x and 2/4. At 50 steps of
    5e-3 (seeds 1-8: 15x-43x, 10x-32x, 3/4-4/4) the test took 48 s alone and over 60 s in the suite."""
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    torch.manual_seed(0)  # LoRA's A matrices are initialised from torch's global generator
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(DEMO)
    base = {name: param.detach().clone() for name, param in model.named_parameters()}
    for param in model.parameters():
        param.requires_grad_(False)
    model = add_lora(model, 16, 32)
    examples = pairs(tokenizer, {w: w for w in words(4)})
    eos = tokenizer.eos_token_id
    assert recalled(model.get_base_model(), examples, 16) == 0
    loss_before = evaluate(model, examples, 0, eos)

    losses = train(model, examples, TrainPlan(7e-3, 4, 35, 5, 10**9, 1, eos), tmp_path)
    assert evaluate(model, examples, 0, eos) < loss_before / 5
    assert mean(losses[-5:]) < mean(losses[:5]) / 3
    assert recalled(model.get_base_model(), examples, 16) >= 2

    # only the adapter trained: every base weight is as loaded
    after = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters() if "lora_" not in n}
    assert after.keys() == base.keys()
    assert all(torch.equal(after[name], base[name]) for name in base)
