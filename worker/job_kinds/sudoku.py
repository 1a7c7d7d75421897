"""The `sudoku` kind's executor: givens pinned, blanks restricted to the digits (and, with `rules`, kept
apart within each row, column and box), several tries side by side, the first valid grid answering."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shared.job_kinds.sudoku import SudokuOutput, SudokuPlan
from shared.sudoku import UNITS, conflicts, is_solution, parse
from worker.engine import EngineResult, Request
from worker.host import LoadedModel
from worker.job_kinds.generation import Decision, GenerationExecutor, try_seeds, with_seeds
from worker.text_assembly import Decode, TextAssembler


class SudokuExecutor(GenerationExecutor):
    plan_model = SudokuPlan

    def prepare(self, plan: SudokuPlan, request: Request, loaded: LoadedModel) -> list[Request]:
        return with_seeds(constrain(plan, request), try_seeds(request.params.seed, plan.tries))

    def decide(self, plan: SudokuPlan, results: list[EngineResult | None], loaded: LoadedModel) -> Decision:
        grids = [grid_of(plan, r, loaded.decode) if r else None for r in results]
        chosen = pick_try(grids)
        return None if chosen is None else (chosen, bool(grids[chosen]["valid"]))  # type: ignore[index]

    def shape(
        self,
        plan: SudokuPlan,
        result: EngineResult,
        text: TextAssembler,
        chosen: int,
        requests: list[Request],
        results: list[EngineResult | None],
    ) -> SudokuOutput:
        grid = grid_of(plan, result, text.decode)
        return SudokuOutput(
            text=grid["grid"],
            token_ids=result.token_ids,
            finish_reason=result.finish_reason,
            grid=grid["grid"],
            valid=grid["valid"],
            steps=result.denoising_steps,
            tries=len(requests),
            try_=chosen,
            seed=requests[chosen].params.seed,
            rules=plan.rules,
        )


def constrain(plan: SudokuPlan, request: Request) -> Request:
    """The request with the givens pinned, the blanks restricted to the digits, and (with `rules`) each
    row, column and box a group of distinct digits; no EOS cut (all 81 cells count)."""
    digits = tuple(plan.digit_ids)
    pinned = {i: digits[int(c) - 1] for i, c in enumerate(plan.grid) if c != "."}
    allowed = {i: digits for i, c in enumerate(plan.grid) if c == "."}
    distinct = tuple(tuple(unit) for _, _, unit in UNITS) if plan.rules else ()
    return replace(request, pinned=pinned, allowed=allowed, distinct=distinct, eos_ids=frozenset())


def grid_of(plan: SudokuPlan, result: EngineResult, decode: Decode) -> dict[str, Any]:
    """The decoded grid and whether it is a valid solution that keeps the givens."""
    grid = decode(result.token_ids)
    complete = len(grid) == 81 and grid.isdigit()
    return {"grid": grid, "valid": complete and is_solution([int(c) for c in grid], parse(plan.grid))}


def pick_try(grids: list[dict[str, Any] | None]) -> int | None:
    """Which try answers the job, or None while that is undecided (None: a try still running).

    The first valid grid in try order wins as soon as every earlier try is done and invalid, so later tries
    can be canceled; the choice never depends on which row finished first. When every try is done and none
    is valid, the grid with the fewest repeated digits wins (the earliest on a tie)."""
    for index, grid in enumerate(grids):
        if grid is None:
            return None
        if grid["valid"]:
            return index
    return min(range(len(grids)), key=lambda i: (repeats(grids[i]["grid"]), i)) if grids else None


def repeats(grid: str) -> int:
    """Rule violations of a decoded grid: repeated digits in rows, columns and boxes (81 if not all digits)."""
    if len(grid) != 81 or not grid.isdigit():
        return 81
    return len(conflicts([int(c) for c in grid]))
