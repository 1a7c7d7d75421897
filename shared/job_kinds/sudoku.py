"""The `sudoku` kind: givens pinned, blanks restricted to digits, tries side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from shared.job_kinds.generate import GenerationOutput

if TYPE_CHECKING:
    from shared.contracts import GenerationParams

MAX_TRIES = 16  # seeds denoised side by side, the first valid grid answering

# Sudoku jobs' defaults where the client sets none (chosen on a tuning set of puzzles, never the held-out
# evaluation set; docs/benchmarks.md): hotter sampling and a tighter entropy bound leave fewer confident
# wrong digits, and a longer budget lets medium puzzles settle. The temperatures go together.
SUDOKU_PARAMS: dict[str, float | int] = {"max_denoising_steps": 64, "entropy_bound": 0.02, "t_min": 0.8, "t_max": 1.2}


def sudoku_params(params: GenerationParams) -> GenerationParams:
    """`params` with the Sudoku defaults for what the client left unset (t_min and t_max as a pair)."""
    unset = {k: v for k, v in SUDOKU_PARAMS.items() if k not in params.model_fields_set}
    if {"t_min", "t_max"} & params.model_fields_set:
        unset.pop("t_min", None)
        unset.pop("t_max", None)
    return params.model_copy(update=unset)


class SudokuPlan(BaseModel):
    """The puzzle rendered as 81 characters ('.' for a blank), the model's digit token ids for 1-9, how many
    tries, and whether the rule mask is on."""

    model_config = ConfigDict(extra="forbid")
    grid: str = Field(min_length=81, max_length=81)
    digit_ids: list[int] = Field(min_length=9, max_length=9)
    tries: int = Field(1, ge=1, le=MAX_TRIES)
    rules: bool = True


class SudokuOutput(GenerationOutput):
    """The answering try's grid, whether it is a valid solution keeping the givens, its steps, and which try
    (with its seed) answered."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    grid: str
    valid: bool
    steps: int
    tries: int
    try_: int = Field(alias="try")
    seed: int
    rules: bool
