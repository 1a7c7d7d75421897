"""Stop strings on text: the final cut, and what a stream may send before the text is complete."""

from __future__ import annotations

from shared.contracts import cut_at_stop, streamable


def test_a_stream_holds_back_only_a_tail_that_could_begin_a_stop() -> None:
    assert streamable("hello EN", ["END"]) == ("hello ", False)
    assert streamable("hello E", ["END", "E!"]) == ("hello ", False)
    assert streamable("hello X", ["END"]) == ("hello X", False)
    assert streamable("hello END more", ["END"]) == ("hello ", True)
    assert streamable("abc", []) == ("abc", False)


def test_what_a_stream_sends_never_shrinks_and_adds_up_to_the_cut_text() -> None:
    text, stops = "say ENOUGH then END and more", ["END", "NOUGHT"]
    sent = ""
    for end in range(len(text) + 1):
        ready, _ = streamable(text[:end], stops)
        assert ready.startswith(sent)
        sent = ready
    assert sent == cut_at_stop(text, stops)[0] == "say ENOUGH then "
