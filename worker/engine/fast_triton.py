"""Pass 1 of the fast sampler (`fast_sampler.vocabulary_stats`) as one Triton kernel: one program per
canvas position streams its row of logits in BLOCK-token blocks and keeps the online statistics in
registers, so nothing of the vocabulary's size is written. The same algorithm as the torch version with
`chunk = BLOCK`, operation for operation (block stats, then the same merge), except two approximations:
tanh is written with exp, and the sums inside a block run in another order. Triton is optional: without
it (or off CUDA) the engine runs the torch version; `TRITON_INTERPRET=1` runs this kernel on the CPU.
"""

from __future__ import annotations

import torch

from worker.engine.fast_sampler import FILL, GAP, Stats

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build: torch's pass 1 only
    triton = None

BLOCK = 4096


def available() -> bool:
    return triton is not None


if triton is not None:
    _FILL: tl.constexpr = tl.constexpr(FILL)
    _GAP: tl.constexpr = tl.constexpr(GAP)

    @triton.jit
    def _mix32(x):
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x5BD1E995
        return x ^ (x >> 16)

    @triton.jit
    def _block_stats(
        logits, row_stride, n, lo, V, t, key, bans, K, softcap, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr
    ):
        offs = lo + tl.arange(0, BLOCK)
        inside = offs < V
        x = tl.load(logits + n * row_stride + offs, mask=inside, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            x = (1.0 - 2.0 / (tl.exp(2.0 * (x / softcap)) + 1.0)) * softcap  # tanh(x / softcap) * softcap
        z = x / t
        banned = offs < 0
        for k in range(K):
            banned = banned | (offs == tl.load(bans + n * K + k))
        z = tl.where(banned, _FILL, z)
        z = tl.where(inside, z, float("-inf"))
        top = tl.max(z, axis=0)
        where = tl.argmax(z, axis=0)
        shifted = tl.maximum(z - top, _FILL)
        e = tl.exp(shifted)
        u = ((_mix32(key ^ offs.to(tl.uint32)) >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07
        race = z + -tl.log(-tl.log(u))
        total = tl.sum(e, axis=0)
        nan = (total != total).to(tl.int32)  # a NaN logit makes its exp, so the sum, NaN
        return (
            top,
            total,
            tl.sum(e * shifted, axis=0),
            lo + where,
            tl.max(race, axis=0),
            lo + tl.argmax(race, axis=0),
            nan,
        )

    @triton.jit
    def _first_pass(
        logits,
        row_stride,
        V,
        C,
        temperatures,
        keys,
        bans,
        K,
        softcap,
        out_max,
        out_sum,
        out_plogp,
        out_argmax,
        out_race,
        out_sample,
        out_nan,
        HAS_SOFTCAP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        n = tl.program_id(0).to(tl.int64)  # n * V passes 2**31 from 8,192 positions of a 262,144 vocabulary
        t = tl.load(temperatures + n // C)
        key = tl.load(keys + n).to(tl.uint32)
        top, total, plogp, best, race, sample, nan = _block_stats(
            logits, row_stride, n, 0, V, t, key, bans, K, softcap, HAS_SOFTCAP, BLOCK
        )
        for lo in range(BLOCK, V, BLOCK):  # merge as fast_sampler.merge does
            b_top, b_total, b_plogp, b_best, b_race, b_sample, b_nan = _block_stats(
                logits, row_stride, n, lo, V, t, key, bans, K, softcap, HAS_SOFTCAP, BLOCK
            )
            new_top = tl.maximum(top, b_top)
            da, db = tl.maximum(top - new_top, -_GAP), tl.maximum(b_top - new_top, -_GAP)
            ca, cb = tl.exp(da), tl.exp(db)
            plogp = ca * (plogp + total * da) + cb * (b_plogp + b_total * db)
            total = ca * total + cb * b_total
            best = tl.where(b_top > top, b_best, best)
            sample = tl.where(b_race > race, b_sample, sample)
            race = tl.maximum(race, b_race)
            top = new_top
            nan += b_nan
        tl.store(out_max + n, top)
        tl.store(out_sum + n, total)
        tl.store(out_plogp + n, plogp)
        tl.store(out_argmax + n, best)
        tl.store(out_race + n, race)
        tl.store(out_sample + n, sample)
        tl.store(out_nan + n, nan)


def vocabulary_stats(
    logits: torch.Tensor,
    softcap: float | None,
    t: torch.Tensor,
    bans: torch.Tensor | None,
    keys: torch.Tensor,
    block: int = BLOCK,
) -> Stats:
    """`fast_sampler.vocabulary_stats(..., chunk=block)` in one kernel launch. logits (B, C, V)."""
    B, C, V = logits.shape
    flat = logits.reshape(B * C, V)
    N, device = B * C, logits.device
    K = 0 if bans is None else bans.shape[-1]
    ban_table = (
        bans.reshape(N, K).to(torch.int32) if bans is not None else torch.zeros(1, dtype=torch.int32, device=device)
    )
    floats = [torch.empty(N, dtype=torch.float32, device=device) for _ in range(4)]
    ints = [torch.empty(N, dtype=torch.int32, device=device) for _ in range(3)]
    _first_pass[(N,)](
        flat,
        flat.stride(0),
        V,
        C,
        t.to(torch.float32).contiguous(),
        keys.reshape(N).contiguous(),
        ban_table.contiguous(),
        K,
        float(softcap or 1.0),
        floats[0],
        floats[1],
        floats[2],
        ints[0],
        floats[3],
        ints[1],
        ints[2],
        HAS_SOFTCAP=softcap is not None,
        BLOCK=min(block, triton.next_power_of_2(V)),
        enable_fp_fusion=False,  # no fused multiply-adds: the torch pass rounds each operation
    )
    top, total, plogp, race = (x.view(B, C) for x in floats)
    best, sample, nan = (x.view(B, C) for x in ints)
    return Stats(top, total, plogp, best.long(), race, sample.long(), nan > 0)
