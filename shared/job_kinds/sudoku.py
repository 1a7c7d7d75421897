"""The `sudoku` kind: givens pinned, blanks restricted to digits, tries side by side."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.job_kinds.generate import GenerationOutput

MAX_TRIES = 16  # seeds denoised side by side, the first valid grid answering


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
