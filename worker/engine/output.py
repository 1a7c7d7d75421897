"""Deciding where a request's output ends after a committed canvas: EOS, the request's own `stop_within`
test (stop strings, matched on the text by the caller), max_new_tokens."""

from __future__ import annotations

from worker.engine.params import Request


def find_end(request: Request, generated: list[int], first_new: int) -> tuple[int, str] | None:
    """(cut index, finish reason) if the output ends within `generated`, else None.

    Only tokens from `first_new` on are new; a stop sequence may start in an earlier canvas.
    """
    ends: list[tuple[int, str]] = []
    eos = next((i for i in range(first_new, len(generated)) if generated[i] in request.eos_ids), None)
    if eos is not None:
        ends.append((eos, "eos"))
    if request.stop_within is not None:
        keep = request.stop_within(generated)
        if keep is not None:
            ends.append((keep, "stop"))
    limit = request.params.max_new_tokens
    ends = [(i, reason) for i, reason in ends if i < limit]
    if ends:
        return min(ends)
    if len(generated) >= limit:
        return limit, "length"
    return None
