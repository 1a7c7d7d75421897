"""The token plans of the constrained job kinds: `infill` (known text pinned in the canvas, holes denoised)
and `sudoku` (givens pinned, blanks restricted to digits). The API validates and tokenizes; the worker
(worker/job_kinds.py) turns the recorded plan into pinned and allowed positions and shapes the output."""

from __future__ import annotations

import re
from typing import Any

from api.schemas import JobCreate
from api.tokenization import ModelTokenizer, tokenizer_for
from shared.errors import InvalidRequest
from shared.models import ModelRecord
from shared.sudoku import GridError, parse, render

HOLE = re.compile(r"<\|hole(?::(\d+))?\|>")
MAX_HOLE_TOKENS = 4096


def infill_plan(body: JobCreate, model: ModelRecord) -> tuple[list[int], dict[str, Any], int]:
    """(prompt ids, recorded input, tokens to generate). The text before the first hole is the prompt;
    from the first hole on, holes and the text between and after them must fit one canvas."""
    pieces = _infill_pieces(body)
    tokenizer = tokenizer_for(model.path)
    prefix = pieces[0] if isinstance(pieces[0], str) else ""
    prompt = tokenizer.encode(prefix)
    segments: list[dict[str, Any]] = []
    for piece in pieces[1:] if isinstance(pieces[0], str) else pieces:
        if isinstance(piece, int):
            segments.append({"hole": piece})
        elif piece:
            segments.append({"text": piece, "ids": _plain_ids(tokenizer, piece)})
    length = sum(s.get("hole", 0) + len(s.get("ids", [])) for s in segments)
    if length > model.canvas_length:
        raise InvalidRequest(
            f"the holes and the text after the first hole take {length} tokens; model {model.name!r} denoises "
            f"a canvas of {model.canvas_length}: shorten the holes or the suffix, or move text into the prefix",
            "template" if body.template is not None else "suffix",
        )
    recorded = {"prefix": prefix, "segments": segments}
    if body.template is not None:
        recorded["template"] = body.template
    return prompt, recorded, length


def _infill_pieces(body: JobCreate) -> list[str | int]:
    """The request as text pieces and hole lengths, in order."""
    default = body.hole_tokens or 16
    if body.template is not None:
        if body.prefix is not None or body.suffix is not None:
            raise InvalidRequest("send either 'template' or 'prefix'/'suffix', not both", "template")
        pieces: list[str | int] = []
        last = 0
        for match in HOLE.finditer(body.template):
            length = int(match.group(1)) if match.group(1) else default
            if not 1 <= length <= MAX_HOLE_TOKENS:
                raise InvalidRequest(f"a hole needs 1 to {MAX_HOLE_TOKENS} tokens, not {length}", "template")
            pieces += [body.template[last : match.start()], length]
            last = match.end()
        if not any(isinstance(p, int) for p in pieces):
            raise InvalidRequest("the template has no hole; mark each with <|hole|> or <|hole:N|>", "template")
        return [*pieces, body.template[last:]]
    if body.prefix is None and body.suffix is None:
        needs = "an infill job needs 'template', or 'prefix' and/or 'suffix' with 'hole_tokens'"
        raise InvalidRequest(needs, "prefix")
    if body.hole_tokens is None:
        raise InvalidRequest(
            "'hole_tokens' (how many tokens the hole takes) is required with prefix/suffix", "hole_tokens"
        )
    return [body.prefix or "", body.hole_tokens, body.suffix or ""]


def _plain_ids(tokenizer: ModelTokenizer, text: str) -> list[int]:
    return tokenizer.tokenizer.encode(text, add_special_tokens=False).ids


def sudoku_plan(body: JobCreate, model: ModelRecord) -> tuple[list[int], dict[str, Any], int]:
    """(prompt ids, recorded input, 81). The prompt states the puzzle ('sudoku: <grid>'), the canvas holds
    the 81 cells: the givens pinned, the blanks restricted to the digits (and, with `rules`, to the digits
    their rows, columns and boxes leave open)."""
    if body.grid is None:
        raise InvalidRequest("a sudoku job needs 'grid': 81 characters, digits with '.' or '0' for blanks", "grid")
    try:
        cells = parse(body.grid)
    except GridError as exc:
        raise InvalidRequest(str(exc), "grid") from None
    tokenizer = tokenizer_for(model.path)
    digits = [_plain_ids(tokenizer, d) for d in "123456789"]
    if any(len(ids) != 1 for ids in digits):
        raise InvalidRequest(f"model {model.name!r} has no single-token digits, so it cannot run sudoku jobs", "model")
    grid = render(cells)
    rules = True if body.rules is None else body.rules
    plan = {"grid": grid, "digit_ids": [ids[0] for ids in digits], "tries": body.tries or 1, "rules": rules}
    return tokenizer.encode(f"sudoku: {grid}\n"), plan, 81


KIND_FIELDS = {
    "generate": {"prompt", "input_ids", "messages"},
    "infill": {"prefix", "suffix", "hole_tokens", "template"},
    "sudoku": {"grid", "tries", "rules"},
}


def check_fields(body: JobCreate) -> None:
    """Fields of another kind are refused (422) rather than silently ignored."""
    allowed = KIND_FIELDS[body.kind]
    stray = sorted(f for fields in KIND_FIELDS.values() for f in fields - allowed if getattr(body, f) is not None)
    if stray:
        raise InvalidRequest(f"'{stray[0]}' does not apply to {body.kind} jobs", stray[0])
