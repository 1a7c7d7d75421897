"""A regression guard for the shipped demo model (models/canvas-demo) on held-out easy Sudoku puzzles,
through the engine as Sudoku jobs run it. It guards the level the model has reached (docs/benchmarks.md:
about 64% of blank cells right, 1.5% solved), not issue 7's target of 90% solved, which it misses.
Not timed."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from shared.sudoku import render
from worker.demo_model.tasks import held_out, sudoku_prompt
from worker.engine import Engine, Request, SamplingParams
from worker.job_kinds import constrain

MODEL = Path(__file__).resolve().parents[2] / "models" / "canvas-demo"
pytestmark = pytest.mark.skipif(not (MODEL / "config.json").exists(), reason="no shipped demo model")


def solve_all(puzzles: list[list[int]], order: str) -> tuple[list[list[int]], float]:
    """Each puzzle as a Sudoku job: its grids and the mean denoising steps."""
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(MODEL).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    digits = [tokenizer(d, add_special_tokens=False).input_ids[0] for d in "123456789"]
    engine = Engine(model, max_rows=50)
    handles = []
    for i, cells in enumerate(puzzles):
        grid = render(cells)
        params = SamplingParams(max_new_tokens=81, max_denoising_steps=64, seed=i, order=order)
        request = Request(f"s{i}", tuple(tokenizer(sudoku_prompt(grid)).input_ids), params)
        handles.append(engine.submit(constrain("sudoku", {"grid": grid, "digit_ids": digits}, request, tokenizer)))
    engine.run_until_idle()
    results = [h.wait(0) for h in handles]
    grids = [[int(c) for c in tokenizer.decode(r.token_ids)] for r in results]
    return grids, sum(r.denoising_steps for r in results) / len(results)


def test_the_shipped_model_fills_most_blank_cells_right_and_in_fewer_steps_than_left_to_right() -> None:
    pairs = held_out("sudoku", 50, level="easy")
    puzzles = [[0 if c == "." else int(c) for c in p.removeprefix("sudoku: ").strip()] for p, _ in pairs]
    solutions = [[int(c) for c in s] for _, s in pairs]
    blanks = sum(1 for cells in puzzles for v in cells if not v)

    def right(grids: list[list[int]]) -> float:
        hits = sum(
            g[i] == s[i] for g, s, p in zip(grids, solutions, puzzles, strict=True) for i in range(81) if not p[i]
        )
        return hits / blanks

    entropy, entropy_steps = solve_all(puzzles, "entropy")
    assert all(g[i] == p[i] for g, p in zip(entropy, puzzles, strict=True) for i in range(81) if p[i])  # givens kept
    left_to_right, ltr_steps = solve_all(puzzles, "left_to_right")
    assert right(entropy) >= 0.55  # chance is about 11%; the model reaches about 64%
    assert right(left_to_right) >= 0.45
    assert entropy_steps < 0.5 * ltr_steps  # several cells per step against one
