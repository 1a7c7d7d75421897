"""A job's text, assembled in one place: the deltas its canvas events stream and its final text, both cut
before the first stop string, and the engine's test for stopping early. Stop strings are matched on the
decoded text, so a stop counts however the tokenizer split it: inside one token ("o\\n" holding the stop
"\\n"), or across tokens. Knows a decode function, not the engine's state; the API relays what it makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[list[int]], str]
INCOMPLETE = "\ufffd"  # what decoding shows for a character whose last bytes are in the next canvas


class TextAssembler:
    """One job's text from its committed ids: stream deltas that add up to the final text, which ends
    before the first of `stops`. Not thread-safe: one engine thread feeds it."""

    def __init__(
        self, decode: Decode, stops: Sequence[str] = (), token_text: Callable[[int], str] | None = None
    ) -> None:
        self.decode = decode
        self.stops = [s for s in stops if s]
        # one token alone, special tokens included (log-probability listings); by default `decode`'s
        self.token_text = token_text or (lambda token: decode([token]))
        self._committed: list[int] = []
        self._sent = ""

    def stop_within(self) -> Callable[[Sequence[int]], int | None] | None:
        """The engine's early-stop test for these stops (`stop_within` below), or None without stops."""
        return stop_within(self.decode, self.stops)

    def canvas_delta(self, token_ids: Sequence[int], final: bool) -> str:
        """The text a committed canvas adds to the stream: a character split across canvases waits for its
        last byte, a tail that could begin a stop waits for the next canvas, nothing from a stop on is sent."""
        self._committed.extend(token_ids)
        text = self.decode(self._committed)
        ready = cut_at_stop(text, self.stops)[0] if final else streamable(text.rstrip(INCOMPLETE), self.stops)[0]
        delta = ready[len(self._sent) :] if ready.startswith(self._sent) else ""
        self._sent += delta
        return delta

    def final_text(self, token_ids: Sequence[int]) -> tuple[str, bool]:
        """The output's text and whether a stop string ended it."""
        return cut_at_stop(self.decode(list(token_ids)), self.stops)


def first_stop(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """(where, length) of the first stop string in `text`: the one that begins first, and of several
    beginning there the shortest (it ends first); None when there is none. Empty stops never match."""
    found = [(at, len(stop)) for stop in stops if stop and (at := text.find(stop)) >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    stop = first_stop(text, stops)
    return (text[: stop[0]], True) if stop else (text, False)


def streamable(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """What of a growing `text` may be streamed now: the text before the first stop string (True), or, when
    none is there yet, the text less its longest tail that could still begin one (False). What it returns
    never shrinks as the text grows, so deltas of it add up to `cut_at_stop`'s final text."""
    cut, stopped = cut_at_stop(text, stops)
    if stopped:
        return cut, True
    tail = max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
    return text[: len(text) - tail], False


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
