"""Sudoku rules: parsing a grid, finding contradictions, checking a solution, solving (counting solutions)
and generating puzzles with a unique solution. Pure Python, used by the API (validation), the worker
(outputs), the demo model's data and the benchmark. It knows nothing of models or the service.

A grid is a list of 81 ints, row by row, 0 for a blank.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DIGITS = "123456789"
BLANKS = ".0"
ALL = 0x3FE  # bits 1..9

ROWS = [[r * 9 + c for c in range(9)] for r in range(9)]
COLS = [[r * 9 + c for r in range(9)] for c in range(9)]
BOXES = [[(br * 3 + r) * 9 + bc * 3 + c for r in range(3) for c in range(3)] for br in range(3) for bc in range(3)]
UNITS = [("row", i + 1, u) for i, u in enumerate(ROWS)]
UNITS += [("column", i + 1, u) for i, u in enumerate(COLS)]
UNITS += [("box", i + 1, u) for i, u in enumerate(BOXES)]
PEERS = [sorted({p for _, _, u in UNITS if cell in u for p in u} - {cell}) for cell in range(81)]


class GridError(ValueError):
    """A grid that cannot be a Sudoku puzzle; the message names what is wrong."""


def parse(grid: str) -> list[int]:
    """81 characters, digits with '.' or '0' for blanks (whitespace ignored) -> cells. Raises GridError."""
    text = "".join(grid.split())
    if len(text) != 81:
        raise GridError(f"a grid has 81 cells; this one has {len(text)}")
    for index, char in enumerate(text):
        if char not in DIGITS and char not in BLANKS:
            raise GridError(
                f"cell {index + 1} (row {index // 9 + 1}, column {index % 9 + 1}) is {char!r}: use 1-9, '.' or '0'"
            )
    cells = [0 if char in BLANKS else int(char) for char in text]
    problems = conflicts(cells)
    if problems:
        raise GridError("the givens contradict each other: " + "; ".join(problems[:3]))
    return cells


def conflicts(cells: list[int]) -> list[str]:
    """Human-readable repeats of a digit inside a row, column or box ('digit 5 twice in row 1')."""
    found = []
    for kind, number, unit in UNITS:
        values = [cells[i] for i in unit if cells[i]]
        for digit in sorted({v for v in values if values.count(v) > 1}):
            found.append(f"digit {digit} twice in {kind} {number}")
    return found


def render(cells: list[int], blank: str = ".") -> str:
    return "".join(str(v) if v else blank for v in cells)


def is_solution(solution: list[int], givens: list[int]) -> bool:
    """A complete valid grid that keeps every given."""
    if len(solution) != 81 or any(not 1 <= v <= 9 for v in solution):
        return False
    if any(g and g != s for g, s in zip(givens, solution, strict=True)):
        return False
    return all(sorted(solution[i] for i in unit) == list(range(1, 10)) for _, _, unit in UNITS)


def solve(cells: list[int], limit: int = 2) -> list[list[int]]:
    """Up to `limit` solutions, by constraint propagation and backtracking on the most constrained cell."""
    candidates = [ALL] * 81
    for index, value in enumerate(cells):
        if value and not _assign(candidates, index, value):
            return []
    solutions: list[list[int]] = []
    _search(candidates, solutions, limit)
    return solutions


@dataclass(frozen=True)
class Puzzle:
    puzzle: list[int]
    solution: list[int]

    @property
    def givens(self) -> int:
        return sum(1 for v in self.puzzle if v)


def full_grid(rng: random.Random) -> list[int]:
    """A random complete grid: a shuffled search from the empty grid."""
    candidates = [ALL] * 81
    solutions: list[list[int]] = []
    _search(candidates, solutions, 1, rng)
    return solutions[0]


def make_puzzle(rng: random.Random, low: int, high: int) -> Puzzle:
    """A puzzle with a unique solution and between `low` and `high` givens: cells are removed in random
    order while the solution stays unique, stopping at a target count drawn from [low, high]."""
    while True:
        solution = full_grid(rng)
        target = rng.randint(low, high)
        puzzle = list(solution)
        order = list(range(81))
        rng.shuffle(order)
        givens = 81
        for index in order:
            if givens == target:
                break
            kept = puzzle[index]
            puzzle[index] = 0
            if givens - 1 < 45 and len(solve(puzzle, 2)) != 1:  # above 45 givens no check is needed in practice
                puzzle[index] = kept
                continue
            givens -= 1
        if givens <= high and len(solve(puzzle, 2)) == 1:
            return Puzzle(puzzle, solution)


# ---- search internals ---------------------------------------------------------------------------------


def _assign(candidates: list[int], index: int, value: int) -> bool:
    """Set a cell and propagate eliminations (naked singles). False on a contradiction."""
    bit = 1 << value
    if not candidates[index] & bit:
        return False
    candidates[index] = bit
    stack = [index]
    while stack:
        cell = stack.pop()
        single = candidates[cell]
        for peer in PEERS[cell]:
            if candidates[peer] & single:
                candidates[peer] &= ~single
                remaining = candidates[peer]
                if not remaining:
                    return False
                if remaining & (remaining - 1) == 0:
                    stack.append(peer)
    return True


def _search(candidates: list[int], solutions: list[list[int]], limit: int, rng: random.Random | None = None) -> None:
    best, best_count = -1, 10
    for index, mask in enumerate(candidates):
        count = mask.bit_count()
        if 1 < count < best_count:
            best, best_count = index, count
    if best < 0:
        solutions.append([mask.bit_length() - 1 for mask in candidates])
        return
    values = [v for v in range(1, 10) if candidates[best] >> v & 1]
    if rng is not None:
        rng.shuffle(values)
    for value in values:
        trial = list(candidates)
        if _assign(trial, best, value):
            _search(trial, solutions, limit, rng)
            if len(solutions) >= limit:
                return
