"""The fast sampling mode: it samples the exact mode's distribution (chi-square over many draws), agrees
with the exact step wherever no randomness enters, allocates no float32 tensor of the vocabulary's size,
compiles without a graph break, mixes with exact rows in one engine pass, and the Triton kernel (when
Triton is installed, in its CPU interpreter) equals the torch pass."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from tests.worker.engine.test_sampler import CPU, C, H, V, rows
from worker.engine import Engine, Request, SamplingParams
from worker.engine.constraints import canvas_constraint
from worker.engine.fast_sampler import fast_tile, noise_key, vocabulary_stats
from worker.engine.sampler import FILL, NONFINITE, categorical_entropy, denoise_tile, draw_noise, exponential_race
from worker.engine.slots import Slots

ROOT = Path(__file__).resolve().parents[3]


def tile(requests: list[Request], V: int = V, C: int = C) -> tuple[Slots, list[int]]:
    slots = Slots(len(requests), C, H, V, torch.float32, CPU)
    index = [slots.acquire(r.params) for r in requests]
    generator = torch.Generator().manual_seed(0)
    for slot, request in zip(index, requests, strict=True):
        canvas = torch.randint(0, V, (C,), generator=generator)
        slots.start_canvas(slot, canvas, canvas_constraint(request, 0, C, V, CPU))
    return slots, index


def keys_of(requests: list[Request]) -> torch.Tensor:
    return torch.tensor([noise_key(r.params.seed, 0) for r in requests])


def chi_square_p(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """The p-value of Pearson's chi-square test of `counts` against the probabilities `expected`."""
    n = counts.sum()
    statistic = ((counts - n * expected) ** 2 / (n * expected)).sum()
    df = torch.tensor((expected > 0).sum().item() - 1, dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, statistic.double() / 2))


def test_the_chunked_pass_gives_the_vocabularys_max_argmax_entropy_and_sample() -> None:
    """Any chunk size: the same argmax and sample, and the entropy Categorical computes (to rounding),
    with forbidden tokens (FILL) and a row that is all forbidden but one token."""
    logits = torch.randn(2, 16, 300) * 5
    logits[1, 2, :290] = FILL
    t = torch.tensor([0.5, 1.3])
    keys = torch.randint(0, 2**32, (2, 16))
    processed = logits / t[:, None, None]
    entropy = categorical_entropy(processed, work=torch.empty_like(processed))
    bans = torch.full((2, 16, 1), 300)
    bans[1, 2, 0] = 0  # a FILL token banned once more changes nothing
    results = [vocabulary_stats(logits, None, t, bans, keys, chunk) for chunk in (1, 7, 64, 300)]
    for stats in results:
        assert torch.equal(stats.argmax, processed.argmax(dim=-1))
        assert torch.equal(stats.sample, results[0].sample)
        torch.testing.assert_close(stats.entropy(), entropy, atol=2e-5, rtol=1e-4)
        assert not stats.nonfinite.any()
    logits[0, 3, 100] = torch.nan
    assert vocabulary_stats(logits, None, t, None, keys, 64).nonfinite.sum() == 1


def test_samples_follow_the_exact_samplers_distribution() -> None:
    """20,000 draws over a six-token vocabulary: the fast sampler's counts fit the exact mode's
    probabilities, and so do the exact mode's own draws (multinomial's race). The same test rejects the
    distribution of another temperature, so it can fail."""
    N = 20_000
    base = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, FILL])  # the last token is forbidden
    logits = base.expand(1, N, 6).clone()
    t = torch.tensor([0.7])
    probs = torch.softmax(logits[0, 0] / t, dim=-1)
    keys = position_keys_for(N)
    fast = torch.bincount(vocabulary_stats(logits, None, t, None, keys, 4).sample[0], minlength=6).double()
    exponential = torch.empty(1, N, 6).exponential_(generator=torch.Generator().manual_seed(1))
    exact = torch.bincount(exponential_race(probs.expand(1, N, 6).clone(), exponential)[0], minlength=6).double()
    assert fast[5] == 0 and exact[5] == 0
    assert chi_square_p(fast[:5], probs[:5].double()) > 1e-3
    assert chi_square_p(exact[:5], probs[:5].double()) > 1e-3
    hotter = torch.softmax(base / 0.8, dim=-1)[:5].double()
    assert chi_square_p(fast[:5], hotter) < 1e-6


def position_keys_for(n: int) -> torch.Tensor:
    """Hash keys of n positions of one row at step 0, as the engine makes them."""
    from worker.engine.fast_sampler import position_keys

    return position_keys(torch.tensor([noise_key(7, 0)]), torch.zeros(1, dtype=torch.int32), n)


def test_constrained_positions_sample_their_allowed_tokens_as_the_exact_mode_would() -> None:
    """A Sudoku-like row (pinned givens, allowed digits, a group's pinned tokens banned), 4,000 seeds:
    at a free position the fast samples never leave what the exact mode allows, and their counts fit the
    exact mode's probabilities there."""
    digits = (10, 11, 12, 13, 14)
    request = Request(
        "s", (1,), SamplingParams(entropy_bound=1e6), pinned={0: 10, 1: 11}, allowed={o: digits for o in range(2, 8)}
    )
    group = ((0, 1, 2, 3),)
    requests = [
        Request(
            "s",
            (1,),
            SamplingParams(entropy_bound=1e6, seed=s),
            pinned=request.pinned,
            allowed=request.allowed,
            distinct=group,
        )
        for s in range(4000)
    ]
    slots, index = tile(requests, V=32, C=8)
    state = slots.gather(torch.tensor(index), index)
    logits = (torch.randn(32) * 2).expand(len(requests), 8, 32).clone()
    out, _ = fast_tile(logits.clone(), state, keys_of(requests), None, torch.randn(32, 4), torch.tensor(1.0))
    generators = [torch.Generator().manual_seed(0)] * len(requests)
    _, probs = denoise_tile(
        logits[:1].clone(), slots.gather(torch.tensor(index[:1]), index[:1]), draw_noise(generators[:1], 8, 32, CPU)
    )
    assert bool(out.held.all())  # an unbounded entropy budget accepts every sample
    assert (out.canvas[:, 0] == 10).all() and (out.canvas[:, 1] == 11).all()
    at_2 = torch.bincount(out.canvas[:, 2], minlength=32).double()
    assert set(torch.nonzero(at_2).flatten().tolist()) <= {12, 13, 14}  # 10 and 11: pinned peers
    assert chi_square_p(at_2[[12, 13, 14]], probs[0, 2, [12, 13, 14]].double()) > 1e-3
    at_5 = torch.bincount(out.canvas[:, 5], minlength=32).double()  # outside the group: every digit
    assert chi_square_p(at_5[list(digits)], probs[0, 5, list(digits)].double()) > 1e-3


def test_the_fast_step_agrees_with_the_exact_step_where_nothing_is_random() -> None:
    """Every kind of row (pinned, allowed, groups, left to right, all pinned): the same argmax canvas,
    stop flags and self-conditioning input as the exact step, from logits in bf16 or float32."""
    requests = rows()
    slots, index = tile(requests)
    state = slots.gather(torch.tensor(index), index)
    logits = torch.randn(len(requests), C, V) * 3
    weight = torch.randn(V, H)
    generators = [torch.Generator().manual_seed(i) for i in range(len(requests))]
    exact, probs = denoise_tile(logits.clone(), state, draw_noise(generators, C, V, CPU))
    fast, soft = fast_tile(logits.clone(), state, keys_of(requests), None, weight, torch.tensor(2.0), chunk=13)
    free = ~state.params.left_to_right  # left to right commits its samples, which differ by mode
    assert torch.equal(fast.argmax[free], exact.argmax[free])
    assert torch.equal(fast.flags, exact.flags)
    torch.testing.assert_close(soft, 2.0 * probs @ weight, atol=1e-5, rtol=1e-5)
    as_bf16 = logits.to(torch.bfloat16)
    exact16, _ = denoise_tile(as_bf16.float(), state, draw_noise(generators, C, V, CPU))
    fast16, _ = fast_tile(as_bf16, state, keys_of(requests), None, weight, torch.tensor(1.0), chunk=16)
    assert torch.equal(fast16.argmax[free], exact16.argmax[free])


def test_nan_logits_flag_a_row_as_the_exact_step_flags_it() -> None:
    """A NaN at a free position flags its row; one at a pinned position (whose logits are overridden) or
    at a token a constrained position may not take does not, in either mode."""
    requests = rows()
    slots, index = tile(requests)
    state = slots.gather(torch.tensor(index), index)
    logits = torch.randn(len(requests), C, V) * 3
    logits[0, 5, 17] = torch.nan  # "plain": free position
    logits[2, 0, 3] = torch.nan  # "pinned": its pinned position 0
    logits[2, 1, 40] = torch.nan  # "pinned": position 1 may take tokens 2-5 only
    generators = [torch.Generator().manual_seed(i) for i in range(len(requests))]
    exact, _ = denoise_tile(logits.clone(), state, draw_noise(generators, C, V, CPU))
    fast, _ = fast_tile(logits.clone(), state, keys_of(requests), None, torch.randn(V, H), torch.tensor(1.0), chunk=16)
    assert torch.equal(fast.flags & NONFINITE, exact.flags & NONFINITE)
    assert [bool(f & NONFINITE) for f in fast.flags] == [True] + [False] * (len(requests) - 1)


def largest_allocations(fn) -> list[int]:
    """The sizes of the CPU allocations made while fn() runs, largest first (torch's memory profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    return sorted(sizes, reverse=True)


def test_no_float32_tensor_of_the_vocabularys_size_is_allocated() -> None:
    """Measured, not mocked: the largest allocation of a fast step over bf16 logits is a chunk's, far below
    one float32 (B, C, V) tensor; the exact step over the same rows allocates several of that size."""
    requests = rows()
    B, V_big, chunk = len(requests), 4096, 128
    slots, index = tile(requests, V=V_big)
    state = slots.gather(torch.tensor(index), index)
    logits = (torch.randn(B, C, V_big) * 3).to(torch.bfloat16)
    weight = torch.randn(V_big, H)
    full = B * C * V_big * 4
    keys = keys_of(requests)
    fast = largest_allocations(lambda: fast_tile(logits, state, keys, 30.0, weight, torch.tensor(1.0), chunk=chunk))
    assert fast[0] <= B * C * chunk * 8 < full // 8, fast[:3]  # the largest: an int64 hash chunk
    draws = draw_noise([torch.Generator()] * B, C, V_big, CPU)
    exact = largest_allocations(lambda: denoise_tile(logits.float(), state, draws))
    assert sum(size >= full for size in exact) >= 2, exact[:3]


def test_the_fast_step_compiles_without_a_graph_break() -> None:
    requests = rows()
    slots, index = tile(requests)
    state = slots.gather(torch.tensor(index), index)
    logits = (torch.randn(len(requests), C, V) * 3).to(torch.bfloat16)
    weight, keys = torch.randn(V, H), keys_of(requests)
    torch._dynamo.reset()
    compiled = torch.compile(fast_tile, fullgraph=True, backend="eager")
    out, soft = compiled(logits, state, keys, 30.0, weight, torch.tensor(1.0), 16)
    expected, expected_soft = fast_tile(logits, state, keys, 30.0, weight, torch.tensor(1.0), 16)
    assert torch.equal(out.canvas, expected.canvas) and torch.equal(out.flags, expected.flags)
    assert torch.equal(soft, expected_soft)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


def run(model, requests: list[Request], **engine_kw) -> list:
    engine = Engine(model, **engine_kw)
    handles = [engine.submit(r) for r in requests]
    engine.run_until_idle()
    return [h.wait(timeout=0) for h in handles]


def test_fast_and_exact_rows_share_a_pass_and_each_keeps_its_output(model) -> None:
    """Rows of both modes in one pass: each row's tokens equal what it produces alone (the fast mode's
    noise depends on nothing but the row), pinned tokens stay, allowed positions obey; and a fast row's
    tokens are not the exact mode's for the same seed."""
    digits = tuple(range(54, 64))

    def params(sampler: str, seed: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=40, max_denoising_steps=12, seed=seed, sampler=sampler)

    requests = [
        Request("exact", (2, 70), params("exact", 1), frozenset()),
        Request("fast", (2, 70), params("fast", 1), frozenset()),
        Request(
            "fast-pinned", (2, 71), params("fast", 2), frozenset(), {0: 80, 33: 82}, {o: digits for o in range(4, 20)}
        ),
        Request("exact-pinned", (2, 72), params("exact", 3), frozenset(), {5: 81}),
    ]
    alone = [run(model, [r])[0].token_ids for r in requests]
    together = run(model, requests, max_rows=4)
    assert [r.token_ids for r in together] == alone
    fast_pinned = together[2].token_ids
    assert fast_pinned[0] == 80 and fast_pinned[33] == 82 and all(fast_pinned[o] in digits for o in range(4, 20))
    assert together[1].token_ids != together[0].token_ids  # same seed and prompt, other mode
    assert all(r.denoising_steps > 0 for r in together)


def test_a_tick_with_fast_rows_reads_the_device_once(model) -> None:
    """Fast rows of every kind beside an exact one: the tick's only host read is the one copy of flags and
    argmax canvases (as for exact rows alone, tests/worker/engine/test_engine.py)."""
    from tests.worker.engine.test_engine import DIGITS, HostReads

    def steps(sampler: str, **kw: str) -> SamplingParams:
        return SamplingParams(max_new_tokens=32, max_denoising_steps=40, stability_threshold=50, sampler=sampler, **kw)

    groups = ((0, 1, 2, 3),)
    requests = [
        Request("exact", (2, 70), steps("exact")),
        Request("fast", (2, 70), steps("fast")),
        Request("pinned", (2, 71), steps("fast"), frozenset(), {0: 80}, {o: DIGITS for o in range(1, 9)}),
        Request("distinct", (2, 72), steps("fast"), frozenset(), {0: 54}, {o: DIGITS[:4] for o in range(1, 4)}, groups),
        Request("l2r", (2, 73), steps("fast", order="left_to_right")),
    ]
    engine = Engine(model, max_rows=5)
    for request in requests:
        engine.submit(request)
    engine.step()  # prefill: every row starts its canvas
    for _ in range(2):
        with HostReads() as reads:
            engine.step()
        assert len(engine.rows) == 5 and all(row.step > 0 for row in engine.rows)
        assert reads.calls[0] == "cpu" and reads.calls.count("cpu") == 1, reads.calls
        assert set(reads.calls[1:]) <= {"tolist"}, reads.calls


def test_an_unknown_sampler_is_refused_naming_the_field(model) -> None:
    from worker.engine import InvalidParams

    with pytest.raises(InvalidParams) as bad:
        Engine(model).submit(Request("x", (2,), SamplingParams(sampler="quick")))
    assert bad.value.field == "sampler"


TRITON_CHECK = """
import torch
from worker.engine import fast_triton
from worker.engine.fast_sampler import vocabulary_stats
torch.manual_seed(0)
B, C, V = 2, 8, 300
logits = (torch.randn(B, C, V) * 4).to(torch.bfloat16)
logits[1, 3, :250] = -1e30
t, keys = torch.tensor([0.6, 1.1]), torch.randint(0, 2**32, (B, C))
bans = torch.full((B, C, 3), V)
bans[0, :, 0], bans[1, 2, 1] = 5, 7
for softcap in (None, 30.0):
    mine = fast_triton.vocabulary_stats(logits, softcap, t, bans, keys, block=64)
    theirs = vocabulary_stats(logits, softcap, t, bans, keys, 64)
    for name in ("max", "sum", "plogp", "race"):
        torch.testing.assert_close(getattr(mine, name), getattr(theirs, name), atol=1e-4, rtol=1e-4)
    assert torch.equal(mine.argmax, theirs.argmax) and torch.equal(mine.sample, theirs.sample)
    assert not mine.nonfinite.any()
print("TRITON EQUAL")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (the CPU build)")
def test_the_triton_kernel_equals_the_torch_pass_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", TRITON_CHECK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "TRITON EQUAL" in result.stdout, result.stderr[-3000:]


def test_the_chi_square_helper_matches_a_known_value() -> None:
    """chi2 = 3.84 with one degree of freedom is p = 0.05."""
    p = chi_square_p(
        torch.tensor([59.7980, 40.2020], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    assert math.isclose(p, 0.05, rel_tol=2e-3)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (the CPU build)")
def test_the_triton_kernel_compiles_to_a_cuda_binary() -> None:
    """No GPU needed: Triton's compiler lowers the kernel through PTX to an sm_90 (H100/H200) binary."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from worker.engine import fast_triton

    pointers = {"logits": "*bf16", "temperatures": "*fp32", "keys": "*i64", "bans": "*i32"}
    ints = {name: "i32" for name in ("row_stride", "V", "C", "K")}
    outs = {f"out_{n}": "*fp32" for n in ("max", "sum", "plogp", "race")} | {
        f"out_{n}": "*i32" for n in ("argmax", "sample", "nan")
    }
    signature = {**pointers, **ints, "softcap": "fp32", **outs, "HAS_SOFTCAP": "constexpr", "BLOCK": "constexpr"}
    source = ASTSource(fast_triton._first_pass, signature, constexprs={"HAS_SOFTCAP": True, "BLOCK": 4096})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
    assert kernel.asm["cubin"]
