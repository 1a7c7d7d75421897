"""Faults stay in their row: a row's failing callback, stop test, adapter or NaN logits fail that row
alone; running out of memory retries the rows of the pass in halves. The other rows' outputs do not change."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.engine.engine import KVAdvanceFailed, NonFiniteLogits
from worker.engine.runner import ModelRunner, UnsupportedModel
from worker.tiny import EOS_ID

EOS = frozenset({EOS_ID})


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


def requests() -> list[Request]:
    return [
        Request(
            f"r{i}",
            tuple(range(2, 5 + 7 * i)),
            SamplingParams(max_new_tokens=40 + 20 * i, max_denoising_steps=5 + 2 * i, entropy_bound=0.3, seed=70 + i),
            EOS,
            draft_interval=0.0,
        )
        for i in range(5)
    ]


@pytest.fixture(scope="module")
def expected(model) -> dict[str, list[int]]:
    """Each request's output in a healthy batch."""
    engine = Engine(model, max_rows=8)
    handles = {r.request_id: engine.submit(r) for r in requests()}
    engine.run_until_idle()
    return {rid: h.wait(0).token_ids for rid, h in handles.items()}


def run_all(engine: Engine, batch: list[Request], on_event=None) -> dict[str, object]:
    """Every request's token ids, or the exception it failed with."""
    handles = {r.request_id: engine.submit(r, on_event) for r in batch}
    engine.run_until_idle()
    out: dict[str, object] = {}
    for rid, handle in handles.items():
        try:
            out[rid] = handle.wait(0).token_ids
        except Exception as exc:
            out[rid] = exc
    return out


def healthy_others_unchanged(got: dict[str, object], expected: dict[str, list[int]], failed: str) -> None:
    assert {rid: tokens for rid, tokens in got.items() if rid != failed} == {
        rid: tokens for rid, tokens in expected.items() if rid != failed
    }


def test_an_exception_in_one_rows_callback_fails_that_row_only(model, expected) -> None:
    def on_event(request_id: str, kind: str, data: dict) -> None:
        if request_id == "r2" and kind == "draft" and data["step"] == 3:
            raise ValueError("the client's callback broke")

    got = run_all(Engine(model, max_rows=8), requests(), on_event)
    assert isinstance(got["r2"], ValueError)
    healthy_others_unchanged(got, expected, "r2")


def test_a_stop_test_that_raises_fails_its_row_only(model, expected) -> None:
    def broken(_ids) -> int | None:
        raise RuntimeError("stop test broke")

    batch = [replace(r, stop_within=broken) if r.request_id == "r1" else r for r in requests()]
    got = run_all(Engine(model, max_rows=8), batch)
    assert isinstance(got["r1"], RuntimeError)
    healthy_others_unchanged(got, expected, "r1")


def test_a_missing_adapter_fails_only_the_rows_that_ask_for_it(model, expected) -> None:
    batch = [*requests(), Request("lost", (2, 70), SamplingParams(max_new_tokens=8), adapter="nowhere")]
    got = run_all(Engine(model, max_rows=8), batch)
    assert isinstance(got["lost"], KeyError)
    healthy_others_unchanged(got, expected, "lost")


def test_out_of_memory_during_a_tick_retries_the_rows_and_changes_no_output(model, expected) -> None:
    """A tick whose batched passes all run out of memory: the rows retry in halves, down to one row a
    pass, with their random streams rewound; every output is what it would have been."""
    engine = Engine(model, max_rows=8)
    decode = engine.runner.decode
    failures: list[int] = []

    def decode_or_run_out(canvas, *args, **kwargs):
        if engine.stats["ticks"] == 4 and canvas.shape[0] > 1:
            failures.append(canvas.shape[0])
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return decode(canvas, *args, **kwargs)

    engine.runner.decode = decode_or_run_out
    got = run_all(engine, requests())
    assert failures[0] == 5 and len(failures) > 2  # the pass of five, then its halves
    assert got == expected


def test_a_row_that_runs_out_of_memory_alone_fails_alone(model, expected) -> None:
    """Every pass that holds r3 runs out of memory (a row too large for what is free): r3 fails with the
    error once it runs alone; the rows batched with it retry without it and finish as they would have."""
    engine = Engine(model, max_rows=8)
    pass_ = engine._pass

    def run_out_with_r3(rows):
        if any(row.request_id == "r3" for row in rows):
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return pass_(rows)

    engine._pass = run_out_with_r3
    got = run_all(engine, requests())
    assert isinstance(got["r3"], torch.OutOfMemoryError)
    healthy_others_unchanged(got, expected, "r3")


def test_nan_logits_fail_their_row_only(model, expected) -> None:
    engine = Engine(model, max_rows=8)
    logits = engine.runner.logits

    def nan_for_the_first_row(hidden):
        out = logits(hidden)
        if engine.stats["ticks"] == 3:
            out[0, 5, 7] = torch.nan  # engine.rows[0] is r0: rows step in admission order
        return out

    engine.runner.logits = nan_for_the_first_row
    got = run_all(engine, requests())
    assert isinstance(got["r0"], NonFiniteLogits)
    healthy_others_unchanged(got, expected, "r0")


def test_attention_the_masks_are_not_built_for_is_refused_at_load(model) -> None:
    text = model.config.get_text_config(decoder=True)
    saved = text._attn_implementation
    try:
        text._attn_implementation = "flex_attention"
        with pytest.raises(UnsupportedModel, match="flex_attention"):
            ModelRunner(model)
    finally:
        text._attn_implementation = saved


def test_out_of_memory_in_an_encoder_pass_retries_the_rows_in_halves(model, expected) -> None:
    """The first tick's encoder pass (every row's prompt) runs out of memory whenever it holds more than
    one row: the rows prefill one by one, and every output is what it would have been."""
    engine = Engine(model, max_rows=8)
    encode = engine.runner.encode
    failures: list[int] = []

    def encode_or_run_out(cache, ids, *args):
        if engine.stats["ticks"] == 1 and ids.shape[0] > 1:
            failures.append(ids.shape[0])
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return encode(cache, ids, *args)

    engine.runner.encode = encode_or_run_out
    got = run_all(engine, requests())
    assert failures[0] == 5 and len(failures) > 2
    assert got == expected


def test_a_row_whose_encoder_pass_runs_out_of_memory_alone_fails_alone(model, expected) -> None:
    engine = Engine(model, max_rows=8)
    encode_pass = engine._encode_pass

    def run_out_with_r3(items):
        if any(row.request_id == "r3" for row, _ in items):
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return encode_pass(items)

    engine._encode_pass = run_out_with_r3
    got = run_all(engine, requests())
    assert isinstance(got["r3"], torch.OutOfMemoryError)
    healthy_others_unchanged(got, expected, "r3")


def test_out_of_memory_while_moving_kv_after_an_encoder_pass_fails_those_rows_without_a_retry(model, expected) -> None:
    """A commit's encoder pass succeeds, then shifting r1's sliding window runs out of memory: its K/V may
    be part moved, so r1 fails (no retry over a half-moved window); the rows beside it are unchanged."""
    engine = Engine(model, max_rows=8)
    advance = engine.kv.advance
    encodes: list[list[int]] = []

    def run_out_for_r1(slots, counts):
        if engine.stats["ticks"] > 1 and slots == [engine_slot(engine, "r1")]:
            encodes.append(slots)
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return advance(slots, counts)

    engine.kv.advance = run_out_for_r1
    got = run_all(engine, [r for r in requests() if r.request_id in ("r0", "r1")])
    assert len(encodes) == 1  # r1 committed alone, once: not retried
    assert isinstance(got["r1"], KVAdvanceFailed) and "out of memory" in str(got["r1"])
    assert got["r0"] == expected["r0"]


def engine_slot(engine: Engine, request_id: str) -> int | None:
    return next((row.slot for row in engine.rows if row.request_id == request_id), None)
