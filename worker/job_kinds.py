"""The worker's side of the constrained job kinds: the plan the API recorded on the job -> pinned and
allowed canvas positions, and the engine's tokens -> the kind's output. Knows the tokenizer, not the DB."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shared.sudoku import UNITS, conflicts, is_solution, parse
from worker.engine import EngineResult, Request


def constrain(kind: str, plan: dict[str, Any], request: Request, tokenizer: Any) -> Request:
    """The request with the kind's pinned and allowed positions (and no EOS cut: every position counts)."""
    if kind == "sudoku":
        digits = tuple(plan["digit_ids"])
        pinned = {i: digits[int(c) - 1] for i, c in enumerate(plan["grid"]) if c != "."}
        allowed = {i: digits for i, c in enumerate(plan["grid"]) if c == "."}
        distinct = tuple(tuple(unit) for _, _, unit in UNITS) if plan.get("rules") else ()
        return replace(request, pinned=pinned, allowed=allowed, distinct=distinct, eos_ids=frozenset())
    if kind == "infill":
        ordinary = ordinary_tokens(tokenizer)
        pinned: dict[int, int] = {}
        allowed: dict[int, tuple[int, ...]] = {}
        offset = 0
        for segment in plan["segments"]:
            if "hole" in segment:
                allowed.update({offset + i: ordinary for i in range(segment["hole"])})
                offset += segment["hole"]
            else:
                pinned.update({offset + i: t for i, t in enumerate(segment["ids"])})
                offset += len(segment["ids"])
        return replace(request, pinned=pinned, allowed=allowed, eos_ids=frozenset())
    return request


def ordinary_tokens(tokenizer: Any) -> tuple[int, ...]:
    """Every id but the special ones (a hole is text: no EOS, padding or turn markers)."""
    special = set(tokenizer.all_special_ids)
    return tuple(i for i in range(len(tokenizer)) if i not in special)


def shape_output(kind: str, plan: dict[str, Any], result: EngineResult, decode: Any) -> dict[str, Any]:
    """The kind's output: generate -> text; infill -> filled text and each hole's fill; sudoku -> the grid,
    whether it is a valid solution that keeps the givens, and the denoising steps taken."""
    ids = result.token_ids
    output: dict[str, Any] = {"text": decode(ids), "token_ids": ids, "finish_reason": result.finish_reason}
    if kind == "sudoku":
        grid = output["text"]
        output["grid"] = grid
        complete = len(grid) == 81 and grid.isdigit()
        output["valid"] = complete and is_solution([int(c) for c in grid], parse(plan["grid"]))
        output["steps"] = result.denoising_steps
    elif kind == "infill":
        fills, offset = [], 0
        for segment in plan["segments"]:
            width = segment.get("hole", len(segment.get("ids", [])))
            if "hole" in segment:
                fills.append({"text": decode(ids[offset : offset + width]), "token_ids": ids[offset : offset + width]})
            offset += width
        output["fills"] = fills
        output["text"] = plan["prefix"] + output["text"]
    return output


def try_seeds(seed: int, tries: int) -> list[int]:
    """The seeds of a job's tries: its recorded seed, then the next ones (try i uses seed + i)."""
    return [(seed + i) % 2**63 for i in range(tries)]


def pick_try(outputs: list[dict[str, Any] | None]) -> int | None:
    """Which of a Sudoku job's tries answers it, or None while that is undecided (None: a try still running).

    The first valid grid in try order wins as soon as every earlier try is done and invalid, so later tries
    can be canceled; the choice never depends on which row finished first. When every try is done and none
    is valid, the grid with the fewest repeated digits wins (the earliest on a tie)."""
    for index, output in enumerate(outputs):
        if output is None:
            return None
        if output["valid"]:
            return index
    return min(range(len(outputs)), key=lambda i: (repeats(outputs[i]["grid"]), i)) if outputs else None


def repeats(grid: str) -> int:
    """Rule violations of a shaped grid: repeated digits in rows, columns and boxes (81 if not all digits)."""
    if len(grid) != 81 or not grid.isdigit():
        return 81
    return len(conflicts([int(c) for c in grid]))
