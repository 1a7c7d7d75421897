"""Planning an `infill` job: the text before the first hole is the prompt; from the first hole on, holes
and the known text between and after them are laid out on one canvas."""

from __future__ import annotations

import re

from api.schemas import JobCreate
from api.tokenization import ModelTokenizer, tokenizer_for
from shared.contracts import GenerationParams
from shared.errors import InvalidRequest
from shared.job_kinds.infill import InfillPlan, Segment
from shared.models import ModelRecord

FIELDS = frozenset({"prefix", "suffix", "hole_tokens", "template"})
HOLE = re.compile(r"<\|hole(?::(\d+))?\|>")
MAX_HOLE_TOKENS = 4096


def plan(body: JobCreate, model: ModelRecord) -> tuple[list[int], InfillPlan, GenerationParams, str]:
    """(prompt ids, the canvas plan, the parameters with max_new_tokens = the canvas used, the field blamed)."""
    field = "template" if body.template is not None else "prefix"
    pieces = _pieces(body)
    tokenizer = tokenizer_for(model.path)
    prefix = pieces[0] if isinstance(pieces[0], str) else ""
    segments = [
        Segment(hole=piece) if isinstance(piece, int) else Segment(text=piece, ids=_plain_ids(tokenizer, piece))
        for piece in (pieces[1:] if isinstance(pieces[0], str) else pieces)
        if piece
    ]
    length = sum(s.width for s in segments)
    if length > model.canvas_length:
        raise InvalidRequest(
            f"the holes and the text after the first hole take {length} tokens; model {model.name!r} denoises "
            f"a canvas of {model.canvas_length}: shorten the holes or the suffix, or move text into the prefix",
            "template" if body.template is not None else "suffix",
        )
    recorded = InfillPlan(prefix=prefix, segments=segments, template=body.template)
    return tokenizer.encode(prefix), recorded, body.params.model_copy(update={"max_new_tokens": length}), field


def _pieces(body: JobCreate) -> list[str | int]:
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
