"""A regression guard for the shipped demo model (models/canvas-demo) on held-out easy Sudoku puzzles,
through the engine as Sudoku jobs run it: issue 7's "at least 90% of 50 easy puzzles solved", checked by
a validator written here (not the service's), against left-to-right order and against the rules mask on
the same model. The model loads once and each of the three sets is solved once. Not timed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from shared.job_kinds.sudoku import SUDOKU_PARAMS, SudokuPlan
from shared.sudoku import render
from worker.engine import Engine, Request, SamplingParams
from worker.job_kinds.sudoku import constrain
from worker.training.demo_model.tasks import held_out, sudoku_prompt

MODEL = Path(__file__).resolve().parents[2] / "models" / "canvas-demo"
pytestmark = pytest.mark.skipif(not (MODEL / "config.json").exists(), reason="no shipped demo model")


@dataclass
class Shipped:
    """The shipped model, loaded once, with its tokenizer and the token ids of the digits 1-9."""

    model: Any
    tokenizer: Any
    digits: list[int]


@dataclass
class Solved:
    """Each puzzle's grid and denoising steps."""

    grids: list[list[int]]
    steps: list[int]

    def first(self, count: int) -> Solved:
        return Solved(self.grids[:count], self.steps[:count])

    @property
    def mean_steps(self) -> float:
        return sum(self.steps) / len(self.steps)


def load_shipped() -> Shipped:
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(MODEL).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    return Shipped(model, tokenizer, [tokenizer(d, add_special_tokens=False).input_ids[0] for d in "123456789"])


def sudoku_request(shipped: Shipped, request: Request, grid: str, rules: bool) -> Request:
    """`request` constrained as the `sudoku` job kind constrains it (the one call into its executor)."""
    return constrain(SudokuPlan(grid=grid, digit_ids=shipped.digits, rules=rules), request)


def solve_all(
    shipped: Shipped, puzzles: list[list[int]], order: str, seeds: Iterable[int] | None = None, rules: bool = False
) -> Solved:
    """Each puzzle as a Sudoku job (puzzle i with seed i, or the i-th of `seeds`), each alone in its row:
    its grids and denoising steps. `rules`: Sudoku jobs' rule mask (off: the model alone)."""
    tokenizer = shipped.tokenizer
    engine = Engine(shipped.model, max_rows=len(puzzles))
    handles = []
    for i, (cells, seed) in enumerate(zip(puzzles, seeds or range(len(puzzles)), strict=True)):
        grid = render(cells)
        params = SamplingParams(max_new_tokens=81, seed=seed, order=order, **SUDOKU_PARAMS)  # as Sudoku jobs run
        request = Request(f"s{i}", tuple(tokenizer(sudoku_prompt(grid)).input_ids), params)
        handles.append(engine.submit(sudoku_request(shipped, request, grid, rules)))
    engine.run_until_idle()
    results = [h.wait(0) for h in handles]
    grids = [[int(c) for c in tokenizer.decode(r.token_ids)] for r in results]
    return Solved(grids, [r.denoising_steps for r in results])


def valid_solution(grid: list[int], puzzle: list[int]) -> bool:
    """Every row, column and box holds 1-9 once, and every given is kept."""
    units = [[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)]
    units += [[(br + r) * 9 + bc + c for r in range(3) for c in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)]
    complete = len(grid) == 81 and all(sorted(grid[i] for i in unit) == list(range(1, 10)) for unit in units)
    return complete and all(g == p for g, p in zip(grid, puzzle, strict=True) if p)


@pytest.fixture(scope="module")
def shipped() -> Shipped:
    return load_shipped()


EASY = held_out("sudoku", 50, level="easy")
# Left-to-right takes about six times the forwards of entropy order (one cell per step): it runs on the
# first 12 puzzles (about 20 s of one core of the slower 2-core VM; 25 took 49 s in the suite). On them
# entropy order solved 12 and left to right 7 (2026-11-29). bench/sudoku.py compares the orders on more
# (docs/benchmarks.md: left to right solved 80.0% of 200 easy puzzles, entropy order 97.2% of 1,000).
LEFT_TO_RIGHT_PUZZLES = 12
PUZZLES = [[0 if c == "." else int(c) for c in p.removeprefix("sudoku: ").strip()] for p, _ in EASY]
SOLUTIONS = [[int(c) for c in s] for _, s in EASY]


@pytest.fixture(scope="module")
def entropy(shipped: Shipped) -> Solved:
    return solve_all(shipped, PUZZLES, "entropy")


@pytest.fixture(scope="module")
def left_to_right(shipped: Shipped) -> Solved:
    return solve_all(shipped, PUZZLES[:LEFT_TO_RIGHT_PUZZLES], "left_to_right")


@pytest.fixture(scope="module")
def ruled(shipped: Shipped) -> Solved:
    return solve_all(shipped, PUZZLES, "entropy", rules=True)


def solved(grids: list[list[int]]) -> int:
    """How many of the first len(grids) puzzles the grids solve."""
    return sum(valid_solution(g, p) for g, p in zip(grids, PUZZLES, strict=False))


def cells_right(grids: list[list[int]]) -> float:
    """The share of the blank cells of the first len(grids) puzzles that equal the unique solution."""
    puzzles, solutions = PUZZLES[: len(grids)], SOLUTIONS[: len(grids)]
    blanks = sum(1 for cells in puzzles for v in cells if not v)
    hits = sum(g[i] == s[i] for g, s, p in zip(grids, solutions, puzzles, strict=True) for i in range(81) if not p[i])
    return hits / blanks


def test_the_validator_rejects_what_it_must() -> None:
    puzzle, solution = PUZZLES[0], SOLUTIONS[0]
    assert valid_solution(solution, puzzle)
    swapped = [{1: 2, 2: 1}.get(v, v) for v in solution]  # still a valid grid, but it changes givens
    assert not valid_solution(swapped, puzzle)
    assert valid_solution(swapped, [0] * 81)
    broken = list(solution)
    broken[0], broken[1] = broken[1], broken[0]  # two cells swapped within a row: columns now repeat
    assert not valid_solution(broken, [0] * 81)
    assert not valid_solution(solution[:80], puzzle)


def test_the_shipped_model_solves_nine_in_ten_easy_puzzles(entropy: Solved) -> None:
    assert solved(entropy.grids) >= 45, f"{solved(entropy.grids)}/50 easy puzzles solved"  # issue 7: at least 90%


def test_entropy_order_beats_left_to_right_in_fewer_steps(entropy: Solved, left_to_right: Solved) -> None:
    """The same model, the same puzzles and seeds (each puzzle alone in its row, so the first 12 of the
    entropy run are those puzzles' answers): more solved, more cells right, several cells per step
    against one."""
    ahead = entropy.first(LEFT_TO_RIGHT_PUZZLES)
    assert solved(ahead.grids) > solved(left_to_right.grids)
    assert cells_right(ahead.grids) > cells_right(left_to_right.grids)
    assert ahead.mean_steps < 0.5 * left_to_right.mean_steps


def test_sudoku_jobs_rule_mask_solves_at_least_as_many_in_fewer_steps(entropy: Solved, ruled: Solved) -> None:
    """The `rules` mask (Sudoku jobs' default) on the same 50 easy puzzles: no fewer solved than the model
    alone, at least 48 (99.1% of 1,000 held-out in bench/sudoku.py --rules), and fewer steps."""
    with_rules, alone = solved(ruled.grids), solved(entropy.grids)
    assert with_rules >= max(48, alone), f"{with_rules}/50 with rules, {alone}/50 without"
    assert ruled.mean_steps < entropy.mean_steps
