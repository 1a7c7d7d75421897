"""Stop strings matched on the decoded text, so a stop counts however the tokenizer split it: inside one
token ("o\\n" holding the stop "\\n"), or across tokens. Knows a decode function, not the engine's state."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.contracts import first_stop

Decode = Callable[[list[int]], str]


def stop_within(decode: Decode, stops: Sequence[str]) -> Callable[[Sequence[int]], int | None] | None:
    """The engine's `stop_within` test for these stops: output ids -> how many ids to keep (through the
    token in which the first stop string ends, so the kept text still holds the whole stop and the caller's
    `cut_at_stop` finds it), or None while no stop string is in the text. The first stop is the one that
    begins first; of several beginning there, the shortest."""
    stops = [s for s in stops if s]
    if not stops:
        return None

    def keep(ids: Sequence[int]) -> int | None:
        stop = first_stop(decode(list(ids)), stops)
        return None if stop is None else tokens_reaching(decode, ids, stop[0] + stop[1] - 1)

    return keep


def tokens_reaching(decode: Decode, ids: Sequence[int], chars: int) -> int:
    """The fewest leading ids whose text is longer than `chars` characters (all of them if none is):
    the first `chars` characters and the token holding the next one. Binary search over prefixes."""
    low, high = 1, len(ids)
    while low < high:
        middle = (low + high) // 2
        if len(decode(list(ids[:middle]))) > chars:
            high = middle
        else:
            low = middle + 1
    return high
