"""The shipped demo model quantized to nf4 still solves Sudoku: a small held-out sample through the Sudoku
job's constraints and sampler (the figures on 100 puzzles per level are in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from shared.job_kinds.sudoku import SUDOKU_PARAMS, SudokuPlan
from shared.sudoku import render
from worker.engine import Engine, Request, SamplingParams
from worker.job_kinds.sudoku import constrain, grid_of
from worker.quantized.checkpoint import quantize_checkpoint
from worker.quantized.loader import load_quantized
from worker.stack import SHIPPED
from worker.training.demo_model.tasks import held_out, sudoku_prompt

pytestmark = pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="no shipped demo model")


@pytest.fixture(scope="module")
def nf4_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("demo") / "canvas-demo-nf4"
    quantize_checkpoint(SHIPPED, dst, "nf4", device="cpu")
    return dst


def test_the_nf4_demo_model_solves_held_out_easy_sudoku(nf4_demo) -> None:
    model = load_quantized(nf4_demo, torch.device("cpu"), torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(nf4_demo)
    digits = [tokenizer(d, add_special_tokens=False).input_ids[0] for d in "123456789"]
    engine = Engine(model, max_rows=8)
    puzzles = []
    for i, (prompt, _solution) in enumerate(held_out("sudoku", 6, level="easy")):
        cells = [0 if c == "." else int(c) for c in prompt.removeprefix("sudoku: ").strip()]
        plan = SudokuPlan(grid=render(cells), digit_ids=digits, rules=True)
        request = Request(str(i), tuple(tokenizer(sudoku_prompt(plan.grid)).input_ids),
                          SamplingParams(max_new_tokens=81, seed=i, **SUDOKU_PARAMS))  # fmt: skip
        puzzles.append((cells, plan, engine.submit(constrain(plan, request))))
    engine.run_until_idle()
    solved = sum(grid_of(plan, handle.wait(0), tokenizer.decode)["valid"] for _cells, plan, handle in puzzles)
    assert solved >= 5  # fp32 solves 99.1% of easy puzzles with the rule mask, nf4 within a few points
