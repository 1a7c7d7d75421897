"""The batched engine on a tiny random DiffusionGemma: exactness against generate(), batch invariance,
pinned and constrained positions, admission, cancellation, stop sequences, events."""

from __future__ import annotations

import threading
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import DiffusionGemmaForBlockDiffusion, LogitsProcessorList

from tests.reference_generation import cut_output, generate_kwargs
from worker.engine import Engine, InvalidParams, Request, SamplingParams
from worker.tiny import EOS_ID

EOS = frozenset({EOS_ID})


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


def run(model, requests: list[Request], **engine_kw) -> list:
    engine = Engine(model, **engine_kw)
    handles = [engine.submit(r) for r in requests]
    engine.run_until_idle()
    return [h.wait(timeout=0) for h in handles]


def reference(model, prompt: list[int], params: SamplingParams, **generate_kw) -> tuple[list[int], str]:
    as_dict = {
        k: getattr(params, k)
        for k in (
            "max_new_tokens",
            "max_denoising_steps",
            "entropy_bound",
            "t_min",
            "t_max",
            "stability_threshold",
            "confidence_threshold",
        )
    }
    torch.manual_seed(params.seed)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), **generate_kwargs(as_dict), **generate_kw)
    return cut_output(out.sequences[0, len(prompt) :].tolist(), params.max_new_tokens, set(EOS))


PARAMS = [
    SamplingParams(max_new_tokens=20, seed=1),
    SamplingParams(max_new_tokens=100, max_denoising_steps=6, entropy_bound=3.0, seed=2),
    SamplingParams(max_new_tokens=64, t_min=0.1, t_max=0.3, stability_threshold=2, confidence_threshold=0.5, seed=3),
    SamplingParams(max_new_tokens=50, max_denoising_steps=24, stability_threshold=0, seed=4),
]


@pytest.mark.parametrize("params", PARAMS)
def test_one_request_reproduces_model_generate_token_for_token(model, params) -> None:
    prompt = [2, 80, 81, 82, 83, 84]
    [result] = run(model, [Request("r", tuple(prompt), params, EOS)])
    expected, reason = reference(model, prompt, params)
    assert result.token_ids == expected
    assert result.finish_reason == reason
    assert len(result.token_ids) <= params.max_new_tokens


class Constrain:
    """generate()'s way to pin and constrain positions (a logits processor, before the temperature), with
    the values the engine writes: a forbidden token's logit is float32's lowest, a pinned token's is 0."""

    def __init__(self, prompt_length: int, pinned: dict[int, int], allowed: dict[int, tuple[int, ...]]) -> None:
        self.prompt_length, self.pinned, self.allowed = prompt_length, pinned, allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        C, lo = scores.shape[1], input_ids.shape[1] - self.prompt_length  # output offset of this canvas
        fill = torch.finfo(scores.dtype).min
        scores = scores.clone()
        for offset, tokens in self.allowed.items():
            if lo <= offset < lo + C:
                keep = scores[0, offset - lo, list(tokens)]
                scores[0, offset - lo] = fill
                scores[0, offset - lo, list(tokens)] = keep
        for offset, token in self.pinned.items():
            if lo <= offset < lo + C:
                scores[0, offset - lo] = fill
                scores[0, offset - lo, token] = 0.0
        return scores


DIGITS = tuple(range(54, 64))  # the byte tokens of '0'..'9' in the tiny tokenizer
CONSTRAINED = [
    # Pins only in the first canvas: generate() seeds only that one (its decoder_input_ids). With pins the
    # engine's confidence averages the free positions only, generate()'s all of them: these sets stop on
    # stability alone (confidence always met) or run every step (never met).
    (SamplingParams(max_new_tokens=60, stability_threshold=1, confidence_threshold=1e9, seed=11), True),
    (SamplingParams(max_new_tokens=40, max_denoising_steps=6, confidence_threshold=1e-9, seed=12), True),
    # Allowed lists alone leave every position free: any parameters compare.
    (SamplingParams(max_new_tokens=70, entropy_bound=1.0, seed=13), False),
    (SamplingParams(max_new_tokens=33, max_denoising_steps=10, t_min=0.2, t_max=0.5, seed=14), False),
]


@pytest.mark.parametrize(("params", "with_pins"), CONSTRAINED)
def test_pinned_and_constrained_requests_reproduce_generate_with_a_logits_processor(model, params, with_pins) -> None:
    prompt = [2, 70, 71, 72]
    pinned = {0: 80, 4: 81, 17: 82} if with_pins else {}
    allowed = {o: DIGITS for o in (*range(5, 12), *range(30, 40), 50)}
    request = Request("c", tuple(prompt), params, EOS, pinned, allowed)
    [result] = run(model, [request])
    C, V = model.config.canvas_length, model.config.get_text_config().vocab_size
    first = torch.randint(0, V, (1, C), generator=torch.Generator().manual_seed(params.seed))
    for offset, token in pinned.items():
        first[0, offset] = token
    expected, reason = reference(
        model,
        prompt,
        params,
        logits_processor=LogitsProcessorList([Constrain(len(prompt), pinned, allowed)]),
        decoder_input_ids=first,  # generate() still draws (and drops) its own first canvas: streams stay aligned
    )
    assert result.token_ids == expected
    assert result.finish_reason == reason
    assert all(result.token_ids[o] == t for o, t in pinned.items() if o < len(result.token_ids))
    assert all(result.token_ids[o] in DIGITS for o in allowed if o < len(result.token_ids))


def mixed_requests() -> list[Request]:
    return [
        Request(
            f"r{i}",
            tuple(range(2, 4 + 9 * i)),
            SamplingParams(
                max_new_tokens=30 + 25 * i, max_denoising_steps=6 + 3 * i, entropy_bound=0.1 * (i + 1), seed=50 + i
            ),
            EOS,
        )
        for i in range(6)
    ]


def test_output_does_not_depend_on_the_batch(model) -> None:
    requests = mixed_requests()
    alone = [run(model, [r])[0].token_ids for r in requests]
    together = [r.token_ids for r in run(model, requests, max_rows=8)]
    assert together == alone
    reversed_order = [r.token_ids for r in run(model, list(reversed(requests)), max_rows=3)]
    assert list(reversed(reversed_order)) == alone


def test_with_the_row_limit_reached_requests_wait_and_all_run_once(model) -> None:
    requests = mixed_requests()
    engine = Engine(model, max_rows=2)
    finished: list[str] = []
    handles = [
        engine.submit(r, on_event=lambda rid, kind, _d: kind == "finished" and finished.append(rid)) for r in requests
    ]
    peak = 0
    while engine.step():
        peak = max(peak, len(engine.rows))
    assert peak == 2
    assert sorted(finished) == sorted(r.request_id for r in requests)  # each exactly once
    assert [h.wait(0).token_ids for h in handles] == [run(model, [r])[0].token_ids for r in requests]


def test_a_memory_budget_limits_admission(model) -> None:
    requests = mixed_requests()[:4]
    engine = Engine(model, max_rows=16, memory_budget_bytes=1)  # room for one row at a time
    handles = [engine.submit(r) for r in requests]
    peak = 0
    while engine.step():
        peak = max(peak, len(engine.rows))
    assert peak == 1
    assert all(h.done for h in handles)


def test_pinned_positions_are_kept_and_constrained_positions_obey(model) -> None:
    digits = DIGITS
    pinned = {0: 80, 5: 81, 31: 82, 33: 83, 40: 84}  # across two canvases of 32
    allowed = {o: digits for o in range(6, 30)}
    requests = [
        Request(
            f"p{seed}",
            (2, 70, 71),
            SamplingParams(max_new_tokens=45, max_denoising_steps=10, seed=seed),
            frozenset(),
            pinned,
            allowed,
        )
        for seed in range(20)
    ]
    for result in run(model, requests, max_rows=8):
        assert len(result.token_ids) == 45
        assert all(result.token_ids[o] == t for o, t in pinned.items())
        assert all(result.token_ids[o] in digits for o in allowed)


def test_a_stop_found_by_the_requests_own_test_ends_the_output(model) -> None:
    """`stop_within` (the worker's test on the text) says how many ids to keep: the output ends there,
    with reason "stop", even when the stop lies in a canvas committed before the last one."""
    free = SamplingParams(max_new_tokens=96, max_denoising_steps=8, seed=9)
    [full] = run(model, [Request("f", (2, 70), free, frozenset())])
    stop = tuple(full.token_ids[40:42])
    first = next(i for i in range(len(full.token_ids)) if tuple(full.token_ids[i : i + 2]) == stop)

    def keep_through_stop(ids) -> int | None:
        return next((i + 2 for i in range(len(ids) - 1) if tuple(ids[i : i + 2]) == stop), None)

    request = Request("s", (2, 70), free, frozenset(), stop_within=keep_through_stop)
    [result] = run(model, [request])
    assert result.finish_reason == "stop"
    assert result.token_ids == full.token_ids[: first + 2]


def test_max_new_tokens_is_not_rounded_to_canvases(model) -> None:
    [result] = run(model, [Request("m", (2, 70), SamplingParams(max_new_tokens=5, seed=1), frozenset())])
    assert (len(result.token_ids), result.finish_reason, result.canvases) == (5, "length", 1)


def test_drafts_and_canvases_are_streamed(model) -> None:
    events: list[tuple[str, dict]] = []
    request = Request(
        "d", (2, 70), SamplingParams(max_new_tokens=64, max_denoising_steps=5, seed=1), frozenset(), draft_interval=0.0
    )
    engine = Engine(model)
    handle = engine.submit(request, on_event=lambda _rid, kind, data: events.append((kind, data)))
    engine.run_until_idle()
    result = handle.wait(0)
    kinds = [k for k, _ in events]
    assert kinds.count("draft") == result.denoising_steps
    assert kinds.count("canvas") == result.canvases == 2
    assert kinds[-1] == "finished"
    canvases = [d["token_ids"] for k, d in events if k == "canvas"]
    assert [t for canvas in canvases for t in canvas] == result.token_ids
    assert all(len(d["token_ids"]) == 32 for k, d in events if k == "draft")


def test_cancel_frees_the_row_at_once(model) -> None:
    long = SamplingParams(max_new_tokens=320, max_denoising_steps=200, stability_threshold=200, seed=1)
    engine = Engine(model, max_rows=1)
    running = engine.submit(Request("run", (2, 70), long, frozenset()))
    waiting = engine.submit(Request("wait", (2, 71), long, frozenset()))
    for _ in range(5):
        engine.step()
    engine.cancel("run")
    engine.cancel("wait")
    engine.step()
    assert engine.rows == []
    assert running.wait(0).finish_reason == "canceled"
    assert waiting.wait(0).finish_reason == "canceled"
    assert running.wait(0).denoising_steps == 5


def test_the_engine_thread_serves_concurrent_submitters(model) -> None:
    requests = mixed_requests()
    expected = [run(model, [r])[0].token_ids for r in requests]
    engine = Engine(model, max_rows=4).start()
    results: dict[str, list[int]] = {}

    def client(request: Request) -> None:
        results[request.request_id] = engine.submit(request).wait(timeout=120).token_ids

    threads = [threading.Thread(target=client, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.stop()
    assert [results[r.request_id] for r in requests] == expected


def test_a_long_prompt_is_prefilled_in_chunks_without_stalling_others(model) -> None:
    short = Request("short", (2, 70), SamplingParams(max_new_tokens=32, max_denoising_steps=30, seed=1), frozenset())
    long = Request("long", tuple([2] + [70] * 600), SamplingParams(max_new_tokens=8, seed=2), frozenset())
    engine = Engine(model, prefill_chunk=128)
    short_handle = engine.submit(short)
    engine.step()  # the short request is denoising
    long_handle = engine.submit(long)
    steps_before = engine.rows[0].steps_total
    for _ in range(4):  # 601 tokens take five chunks; the short row keeps stepping meanwhile
        engine.step()
    assert engine.rows[0].steps_total == steps_before + 4
    engine.run_until_idle()
    assert long_handle.wait(0).token_ids
    assert short_handle.wait(0).token_ids == run(model, [short])[0].token_ids


def test_bad_requests_are_refused_naming_the_field(model) -> None:
    engine = Engine(model)
    with pytest.raises(InvalidParams) as bad_t:
        engine.submit(Request("x", (2,), SamplingParams(t_min=0.9, t_max=0.5)))
    assert bad_t.value.field == "t_max"
    with pytest.raises(InvalidParams) as bad_token:
        engine.submit(Request("y", (2, 10_000)))
    assert bad_token.value.field == "prompt_ids"


def test_left_to_right_order_accepts_one_free_position_per_step(model) -> None:
    pinned = {0: 80, 5: 81, 20: 82}
    drafts: list[list[int]] = []

    def on_event(_request_id: str, kind: str, data: dict) -> None:
        if kind == "draft":
            drafts.append(data["token_ids"])

    params = SamplingParams(max_new_tokens=32, max_denoising_steps=64, seed=4, order="left_to_right")
    engine = Engine(model, max_rows=2)
    handle = engine.submit(Request("l2r", (2, 70), params, frozenset(), pinned, draft_interval=0.0), on_event)
    engine.run_until_idle()
    result = handle.wait(0)
    assert result.denoising_steps == 32 - len(pinned)  # one step per free position of the canvas
    assert all(result.token_ids[o] == t for o, t in pinned.items())
    # What a step accepted stays: each draft's accepted prefix is a prefix of the next and of the result.
    free = [o for o in range(32) if o not in pinned]
    for step, draft in enumerate(drafts):
        accepted = free[: step + 1]
        assert [draft[o] for o in accepted] == [result.token_ids[o] for o in accepted]


def distinct_requests(groups: tuple[tuple[int, ...], ...], seeds: range) -> list[Request]:
    """Four groups of four positions over tokens 54-57, each with three pinned: one blank per group."""
    tokens = (54, 55, 56, 57)
    pinned = {4 * g + k: tokens[(g + k) % 4] for g in range(4) for k in range(3)}
    allowed = {4 * g + 3: tokens for g in range(4)}
    params = lambda seed: SamplingParams(max_new_tokens=16, max_denoising_steps=8, seed=seed)  # noqa: E731
    return [Request(f"d{s}", (2, 70), params(s), frozenset(), pinned, allowed, groups) for s in seeds]


def test_distinct_groups_leave_a_blank_only_the_token_its_peers_do_not_hold(model) -> None:
    groups = tuple(tuple(range(4 * g, 4 * g + 4)) for g in range(4))
    missing = [[54, 55, 56, 57][(g + 3) % 4] for g in range(4)]  # the one token each group's pins leave
    for result in run(model, distinct_requests(groups, range(6)), max_rows=6):
        assert [result.token_ids[4 * g + 3] for g in range(4)] == missing
    # Without the groups the untrained model picks among all four tokens, so the check above can fail.
    alone = run(model, distinct_requests((), range(6)), max_rows=6)
    assert any(r.token_ids[4 * g + 3] != missing[g] for r in alone for g in range(4))


def test_a_blank_whose_peers_hold_every_allowed_token_keeps_the_models_choice(model) -> None:
    tokens = (54, 55)
    request = Request(
        "stuck",
        (2, 70),
        SamplingParams(max_new_tokens=8, max_denoising_steps=8, seed=1),
        frozenset(),
        {0: 54, 1: 55},
        {2: tokens},
        ((0, 1, 2),),
    )
    (result,) = run(model, [request])
    assert result.token_ids[2] in tokens  # no empty distribution: the allowed tokens still apply


def test_a_distinct_group_must_list_each_offset_once(model) -> None:
    with pytest.raises(InvalidParams) as bad:
        Engine(model).submit(Request("g", (2,), SamplingParams(max_new_tokens=4), distinct=((1, 1),)))
    assert bad.value.field == "distinct"


HOST_READS = {
    "item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "is_nonzero",
    "nonzero", "argwhere", "masked_select", "unique", "equal", "allclose", "multinomial",
}  # fmt: skip


class HostReads(TorchFunctionMode):
    """Records the torch calls that make the host wait for a device (or that do on CUDA): reading a value
    (`.item()`, `.tolist()`, `bool()`, `.cpu()`), data-dependent shapes (nonzero, boolean indexing) and
    `multinomial` (its input checks read the device). The CPU stand-in for CUDA's sync debug mode."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS and not _cpu_only_draws():
            self.calls.append(name)
        elif name == "__getitem__" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        ):
            self.calls.append("boolean index")
        return func(*args, **(kwargs or {}))


def _cpu_only_draws() -> bool:
    """Whether the call comes from the CPU's vectorised Exp(1) draws (cpu_draws.py): numpy views of CPU
    tensors, made only for CPU generators, so never a device read."""
    return any(frame.filename.endswith("cpu_draws.py") for frame in traceback.extract_stack(limit=4))


@pytest.mark.parametrize("graphs", ["auto", "uncaptured"])
def test_a_denoising_tick_reads_the_device_once(model, graphs) -> None:
    """Rows of every kind (plain, pinned and allowed, all-different groups, left to right) step together;
    each tick's first host read is the one copy of flags and argmax canvases, and it is the only one
    (what follows reads that host copy); with eager passes and with bucketed ones (graphs.py)."""
    steps = SamplingParams(max_new_tokens=32, max_denoising_steps=40, stability_threshold=50, seed=1)
    groups = ((0, 1, 2, 3),)
    requests = [
        Request("plain", (2, 70), steps),
        Request("pinned", (2, 71), steps, frozenset(), {0: 80}, {o: DIGITS for o in range(1, 9)}),
        Request("distinct", (2, 72), steps, frozenset(), {0: 54}, {o: DIGITS[:4] for o in range(1, 4)}, groups),
        Request("l2r", (2, 73), SamplingParams(max_new_tokens=32, max_denoising_steps=40, order="left_to_right")),
    ]
    engine = Engine(model, max_rows=4, graphs=graphs)
    for request in requests:
        engine.submit(request)
    engine.step()  # prefill: every row starts its canvas
    for _ in range(3):
        with HostReads() as reads:
            engine.step()
        assert len(engine.rows) == 4 and all(row.step > 0 for row in engine.rows)
        assert reads.calls[0] == "cpu" and reads.calls.count("cpu") == 1, reads.calls
        assert set(reads.calls[1:]) <= {"tolist"}, reads.calls


def test_tiles_and_where_the_draws_happen_do_not_change_outputs(model) -> None:
    """Sampler tiles of two rows, draws in line (as on a GPU) instead of in threads ahead of the decoder
    pass (as on the CPU): the same tokens."""
    requests = mixed_requests()
    expected = [r.token_ids for r in run(model, requests, max_rows=8)]
    engine = Engine(model, max_rows=8)
    engine.tile_rows, engine._cpu_pool = 2, None
    handles = [engine.submit(r) for r in requests]
    engine.run_until_idle()
    assert [h.wait(0).token_ids for h in handles] == expected
