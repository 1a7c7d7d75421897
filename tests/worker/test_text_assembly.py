"""A job's text assembly: stop strings matched on the text (with a tokenizer that merges characters, a stop
string can lie inside one token, where matching token ids cannot see it), the stream's deltas and the
final text."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from worker.text_assembly import TextAssembler, cut_at_stop, stop_within, streamable, tokens_reaching


def merging_tokenizer() -> Tokenizer:
    """Byte-level BPE that merges "o" + "\\n" into one token (as real tokenizers merge "\\n\\n" and more)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    newline = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str("\n")[0][0]
    vocab["o" + newline] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("o", newline)]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_a_stop_inside_a_merged_token_is_found() -> None:
    tokenizer = merging_tokenizer()
    decode = tokenizer.decode
    ids = tokenizer.encode("hello\nworld").ids
    newline = tokenizer.encode("\n").ids
    assert len(ids) == 10 and all(i not in ids for i in newline)  # "o\n" is one token: no "\n" token appears
    keep = stop_within(decode, ["\n"])
    assert keep(ids) == 5  # h e l l (o\n): through the token in which the stop ends
    assert keep(ids[:4]) is None


def test_a_stop_across_tokens_and_the_earliest_of_several() -> None:
    tokenizer = merging_tokenizer()
    ids = tokenizer.encode("one two three").ids
    # "o t" begins first (character 6, "two"'s o) and ends in "three"'s t, the 9th token
    assert stop_within(tokenizer.decode, ["three", "o t"])(ids) == 9
    assert stop_within(tokenizer.decode, ["e", "thr"])(ids) == 3  # "one": "e" begins (and ends) first
    assert stop_within(tokenizer.decode, [""]) is None and stop_within(tokenizer.decode, []) is None


def test_tokens_reaching_counts_the_token_that_holds_the_next_character() -> None:
    tokenizer = merging_tokenizer()
    ids = tokenizer.encode("go\nx").ids  # g, (o\n), x
    assert [tokens_reaching(tokenizer.decode, ids, n) for n in range(4)] == [1, 2, 2, 3]
    assert tokens_reaching(tokenizer.decode, ids, 10) == 3


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


def test_canvas_deltas_hold_back_a_possible_stop_and_add_up_to_the_final_text() -> None:
    """A stop can begin in one canvas and end in the next ("...ST" then "OP..."): those characters wait."""
    tokenizer = merging_tokenizer()
    ids = tokenizer.encode("hello world STOP more").ids
    text = TextAssembler(tokenizer.decode, ["STOP"])
    deltas = [text.canvas_delta(ids[:14], final=False), text.canvas_delta(ids[14:], final=True)]
    assert deltas == ["hello world ", ""]
    assert text.final_text(ids) == ("hello world ", True)
    plain = TextAssembler(tokenizer.decode)
    assert plain.canvas_delta(ids[:14], final=False) == "hello world ST" and plain.stop_within() is None


def test_a_character_split_across_canvases_waits_for_its_last_byte() -> None:
    tokenizer = merging_tokenizer()
    ids = tokenizer.encode("café!").ids  # é is two byte-level tokens
    text = TextAssembler(tokenizer.decode)
    first = text.canvas_delta(ids[:4], final=False)
    assert first == "caf" and first + text.canvas_delta(ids[4:], final=True) == "café!"
