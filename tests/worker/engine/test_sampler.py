"""The batched sampler step: each of its pieces equals what generate() computes, bit for bit; the whole
step equals the per-row sampler it replaced on the same rows; it compiles without a graph break."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical
from transformers.models.diffusion_gemma.generation_diffusion_gemma import LinearTemperatureScheduleLogitsProcessor

from tests.worker.engine import reference_sampler as reference
from worker.engine.constraints import canvas_constraint
from worker.engine.params import Request, SamplingParams
from worker.engine.sampler import (
    CONVERGED,
    FILL,
    TileParams,
    categorical_entropy,
    denoise_tile,
    draw_noise,
    exponential_race,
    temperature,
)
from worker.engine.slots import Slots

CPU = torch.device("cpu")


@pytest.mark.parametrize(("C", "V"), [(32, 262), (64, 4096), (7, 5), (33, 4097)])
def test_the_exponential_race_draws_what_multinomial_draws(C: int, V: int) -> None:
    """ATen's one-sample multinomial is argmax(p / Exp(1)): same token, same generator state after."""
    for seed in range(3):
        logits = torch.randn(C, V) * 4
        logits[0, : V // 2] = FILL  # forbidden tokens (probability 0), as constraints make them
        probs = torch.softmax(logits / 0.6, dim=-1)
        mine, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        q = torch.empty((1, C, V)).exponential_(1.0, generator=mine)[0]
        assert torch.equal(exponential_race(probs, q), torch.multinomial(probs, 1, generator=theirs)[:, 0])
        assert torch.equal(mine.get_state(), theirs.get_state())


def test_the_entropy_is_categoricals_bit_for_bit() -> None:
    logits = torch.randn(3, 16, 300) * 5
    logits[1, 2, :290] = FILL
    logits[2, 5] = -torch.inf
    logits[2, 5, 7] = 1.0
    expected = Categorical(logits=logits, validate_args=False).entropy()
    assert torch.equal(categorical_entropy(logits, work=torch.empty_like(logits)), expected)


def test_the_temperature_is_generates_schedule_bit_for_bit() -> None:
    scores = torch.randn(1, 4, 9)
    for t_min, t_max in [(0.4, 0.8), (0.1, 0.3), (0.05, 1.7), (0.333, 0.334)]:
        for steps in (1, 6, 48, 257):
            schedule = LinearTemperatureScheduleLogitsProcessor(t_min, t_max, steps)
            params = TileParams(
                steps=torch.full((steps,), steps, dtype=torch.int32),
                t_min=torch.full((steps,), t_min),
                t_span=torch.full((steps,), t_max - t_min),
                entropy_bound=torch.zeros(steps),
                confidence=torch.zeros(steps),
                stability=torch.zeros(steps, dtype=torch.int32),
                left_to_right=torch.zeros(steps, dtype=torch.bool),
            )
            t = temperature(torch.arange(steps, dtype=torch.int32), params)  # step k: steps - k remaining
            for k in range(steps):
                expected = schedule(None, scores, cur_step=torch.tensor(steps - k, dtype=torch.int32))
                assert torch.equal(scores / t[k], expected)


C, V, H = 32, 61, 8
DIGITS = (10, 11, 12, 13)


def rows() -> list[Request]:
    """Rows that exercise every rule: entropy order with several parameter sets, pinned and allowed
    positions, all-different groups, left-to-right order, a canvas that is all pinned."""
    sudoku_pins = {4 * g + k: DIGITS[(g + k) % 4] for g in range(4) for k in range(2)}
    sudoku_allowed = {4 * g + k: DIGITS for g in range(4) for k in (2, 3)}
    groups = tuple(tuple(range(4 * g, 4 * g + 4)) for g in range(4))
    return [
        Request("plain", (1,), SamplingParams(seed=1)),
        Request(
            "loose",
            (1,),
            SamplingParams(
                max_denoising_steps=8,
                entropy_bound=2.0,
                t_min=0.2,
                t_max=0.9,
                stability_threshold=2,
                confidence_threshold=10.0,
                seed=2,
            ),
        ),
        Request(
            "pinned",
            (1,),
            SamplingParams(entropy_bound=1.0, confidence_threshold=3.0, seed=3),
            pinned={0: 3, 7: 9, 31: 1},
            allowed={o: (2, 3, 4, 5) for o in range(1, 7)},
        ),
        Request(
            "sudoku",
            (1,),
            SamplingParams(entropy_bound=0.5, seed=4),
            pinned=sudoku_pins,
            allowed=sudoku_allowed,
            distinct=groups,
        ),
        Request("l2r-pinned", (1,), SamplingParams(order="left_to_right", seed=5), pinned={0: 7, 3: 8}),
        Request(
            "l2r",
            (1,),
            SamplingParams(order="left_to_right", stability_threshold=0, seed=6),
            pinned={o: o for o in range(4, C)},  # four free positions: done after four steps
        ),
        Request("all-pinned", (1,), SamplingParams(seed=7), pinned={o: o for o in range(C)}),
        Request("eager", (1,), SamplingParams(stability_threshold=0, confidence_threshold=50.0, seed=8)),
    ]


def test_the_batched_step_equals_the_per_row_sampler_bit_for_bit() -> None:
    """Several steps of every kind of row at once against the per-row sampler the engine used before:
    processed logits, samples, accepted positions, next canvases, argmaxes, stop decisions, the
    self-conditioning probabilities and each row's random stream."""
    requests = rows()
    B, embeddings = len(requests), torch.randn(V, H)
    slots = Slots(B + 2, C, H, V, torch.float32, CPU)
    index = [slots.acquire(r.params) for r in requests]
    mine = [torch.Generator().manual_seed(r.params.seed) for r in requests]
    theirs = [torch.Generator().manual_seed(r.params.seed) for r in requests]
    refs = []
    for slot, request, generator in zip(index, requests, mine, strict=True):
        canvas = torch.randint(0, V, (C,), generator=generator)
        slots.start_canvas(slot, canvas, canvas_constraint(request, 0, C, V, CPU))
        torch.randint(0, V, (C,), generator=theirs[len(refs)])  # the same draw on the reference's stream
        history = torch.full((request.params.stability_threshold, 1, C), -1, dtype=torch.long)
        constraint = reference.canvas_constraint(request, 0, C, CPU)
        refs.append({"canvas": slots.canvas[slot][None].clone(), "history": history, "held": None, "c": constraint})
    scale = torch.tensor([3.0, 0.5, 2.0, 1.5, 1.0, 4.0, 1.0, 8.0])[:, None, None]
    base = torch.randn(B, C, V) * scale
    converged_rows = set()
    for step in range(6):
        logits = base + 0.3 * torch.randn(B, C, V) * (step == 1)  # from step 2 on the argmaxes repeat
        tile_index = torch.tensor(index)
        state = slots.gather(tile_index, index)
        processed = logits.clone()
        out, probs = denoise_tile(processed, state, draw_noise(mine, C, V, CPU))
        slots.store(tile_index, out, torch.zeros(B, C, H))
        for b, (request, ref) in enumerate(zip(requests, refs, strict=True)):
            remaining = request.params.max_denoising_steps - step
            expected, ref["history"] = reference.denoise_step(
                logits[b : b + 1].clone(),
                ref["canvas"],
                remaining,
                request.params,
                theirs[b],
                ref["c"],
                ref["history"],
                ref["held"],
            )
            ref["canvas"], ref["held"] = expected.canvas, expected.accepted
            where = f"row {request.request_id}, step {step}"
            assert torch.equal(processed[b], expected.processed[0]), where
            assert torch.equal(out.canvas[b], expected.canvas[0]), where
            assert torch.equal(out.argmax[b], expected.argmax[0]), where
            assert torch.equal(out.held[b], expected.accepted[0]), where
            assert bool(out.flags[b] & CONVERGED) == expected.converged, where
            assert torch.equal(mine[b].get_state(), theirs[b].get_state()), where
            soft = expected.processed.softmax(dim=-1, dtype=torch.float32) @ embeddings
            assert torch.equal((probs @ embeddings)[b], soft[0]), where
            converged_rows |= {request.request_id} if expected.converged else set()
    assert {"loose", "all-pinned", "eager", "l2r"} <= converged_rows  # the stop rules were exercised
    assert "plain" not in converged_rows


def test_the_sampler_step_compiles_without_a_graph_break() -> None:
    """fullgraph=True fails on any graph break: a `.item()`, a branch on a tensor's value, a
    data-dependent shape (boolean indexing, nonzero). The CPU stand-in for "capturable"."""
    requests = rows()
    slots = Slots(len(requests), C, H, V, torch.float32, CPU)
    index = [slots.acquire(r.params) for r in requests]
    for slot, request in zip(index, requests, strict=True):
        slots.start_canvas(slot, torch.randint(0, V, (C,)), canvas_constraint(request, 0, C, V, CPU))
    state = slots.gather(torch.tensor(index), index)
    logits = torch.randn(len(requests), C, V) * 3
    generators = [torch.Generator().manual_seed(i) for i in range(len(requests))]
    draws = draw_noise(generators, C, V, CPU)
    torch._dynamo.reset()
    compiled = torch.compile(denoise_tile, fullgraph=True, backend="eager")
    out, probs = compiled(logits.clone(), state, draws.__class__(draws.exponential.clone(), draws.renoise))
    expected, expected_probs = denoise_tile(logits.clone(), state, draws)
    assert torch.equal(out.canvas, expected.canvas) and torch.equal(out.flags, expected.flags)
    assert torch.equal(probs, expected_probs)
