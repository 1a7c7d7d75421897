"""Planning a `sudoku` job: the prompt states the puzzle ('sudoku: <grid>'), the canvas holds the 81 cells:
the givens pinned, the blanks restricted to the digits (and, with `rules`, to the digits their rows,
columns and boxes leave open)."""

from __future__ import annotations

from api.schemas import JobCreate
from api.tokenization import tokenizer_for
from shared.contracts import GenerationParams
from shared.errors import InvalidRequest
from shared.job_kinds.sudoku import SudokuPlan, sudoku_params
from shared.models import ModelRecord
from shared.sudoku import GridError, parse, render

FIELDS = frozenset({"grid", "tries", "rules"})


def plan(body: JobCreate, model: ModelRecord) -> tuple[list[int], SudokuPlan, GenerationParams, str]:
    """(prompt ids, the grid plan, Sudoku's sampling defaults where the client set none, the field blamed)."""
    if body.grid is None:
        raise InvalidRequest("a sudoku job needs 'grid': 81 characters, digits with '.' or '0' for blanks", "grid")
    try:
        cells = parse(body.grid)
    except GridError as exc:
        raise InvalidRequest(str(exc), "grid") from None
    tokenizer = tokenizer_for(model.path)
    digits = [tokenizer.tokenizer.encode(d, add_special_tokens=False).ids for d in "123456789"]
    if any(len(ids) != 1 for ids in digits):
        raise InvalidRequest(f"model {model.name!r} has no single-token digits, so it cannot run sudoku jobs", "model")
    grid = render(cells)
    rules = True if body.rules is None else body.rules
    recorded = SudokuPlan(grid=grid, digit_ids=[ids[0] for ids in digits], tries=body.tries or 1, rules=rules)
    params = sudoku_params(body.params).model_copy(update={"max_new_tokens": 81})
    return tokenizer.encode(f"sudoku: {grid}\n"), recorded, params, "grid"
