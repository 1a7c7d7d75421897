"""The model side: the batched decoder pass is capturable (no graph break) and equals its eager self."""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


@pytest.mark.parametrize("prompt_lengths", [(5,), (3, 9, 40)])
def test_the_decoder_pass_compiles_without_a_graph_break(model, prompt_lengths) -> None:
    """One row and rows of different lengths (their K/V slots read in place, masks for the shorter rows)
    through `torch.compile(fullgraph=True)`: the CPU stand-in for a pass a CUDA graph can capture."""
    engine = Engine(model, max_rows=4)
    for i, n in enumerate(prompt_lengths):
        engine.submit(Request(f"r{i}", tuple(range(2, 2 + n)), SamplingParams(max_new_tokens=32, seed=i)))
    engine.step()  # prefill: every row has its prompt's K/V and a canvas
    runner, rows, C = engine.runner, engine.rows, engine.runner.canvas_length
    lo, hi = rows[0].slot, rows[-1].slot + 1
    with torch.inference_mode():
        kv, masks, positions = engine.kv.decoder(lo, hi, C)
        args = (engine.slots.canvas[lo:hi], engine.slots.soft[lo:hi], kv, runner.masks(masks), positions)
        torch._dynamo.reset()
        decode = torch.compile(type(runner).decode.__wrapped__, fullgraph=True, backend="eager")
        assert torch.equal(decode(runner, *args), runner.decode(*args))
