"""The fast sampling mode (`sampler: "fast"`): one denoising step of a tile of rows straight from the
lm_head's logits in the weights' dtype (bf16 on a GPU), with no float32 full-vocabulary tensor at all.

Two passes over the vocabulary, `chunk` tokens at a time (float32 temporaries are (B, C, chunk)):
1. online statistics of the processed logits z = softcap(x) / t (banned tokens: FILL): their max, sum of
   exp(z - max), the entropy's sum of exp(z - max) * (z - max), the argmax, and a Gumbel-max sample
   argmax(z + g) with g from a counter-based hash of (row key, step, position, token). On a GPU with
   Triton the first pass is one kernel (`worker/engine/fast_triton.py`) running the same algorithm.
2. the self-conditioning input softmax(z) @ E, chunk by chunk from the first pass's max and sum.
Positions with an allowed list (a Sudoku's digits) are sampled over that list only, pinned positions
take their token; acceptance, renoising and the stop test are the exact sampler's (`finish_step`).

The distribution sampled is the exact mode's; the random stream is not: a fast row's tokens do not
equal `generate()`'s for the same seed (they depend on the seed, the canvas, the step and the position,
not on what other rows or other steps drew).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.engine.sampler import FILL, TileOutput, TileState, finish_step, peer_tokens, temperature

CHUNK = 8192  # tokens per chunk of a pass on a GPU: float32 temporaries are (B, C, CHUNK)
CPU_CHUNK_ELEMENTS = 2**19  # on the CPU a chunk of the whole tile stays near the caches' size (measured: 4x faster)
MASK32 = 0xFFFFFFFF
_MIX = (0x7FEB352D, 0x5BD1E995)  # odd multipliers below 2**31: products of 32-bit values stay in int64
_POSITION = 0x9E3779B9  # spreads positions over the 32-bit keys
_RENOISE = 0x68E31DA4  # above any vocabulary: the renoise draw never shares a hash input with a token
GAP = 200.0  # exp(-200) is 0 in float32


def mix32(x):  # an int64 tensor or a Python int, values below 2**32
    """A bijective 32-bit finaliser (xorshift-multiply, lowbias32's shape). In int64 with the products
    below 2**63 it equals the uint32 wrap-around arithmetic the Triton kernel uses."""
    x = x ^ (x >> 16)
    x = (x * _MIX[0]) & MASK32
    x = x ^ (x >> 15)
    x = (x * _MIX[1]) & MASK32
    return x ^ (x >> 16)


def noise_key(seed: int, canvas: int) -> int:
    """A row's key for one canvas: its seed (all 64 bits) and the canvas's index. Host side."""
    return mix32(mix32(mix32(seed >> 32) ^ (seed & MASK32)) ^ canvas)


def position_keys(keys: torch.Tensor, step: torch.Tensor, C: int) -> torch.Tensor:
    """Per-position hash keys of a step: keys (B,) int64, step (B,) -> (B, C) int64 below 2**32."""
    row = mix32(keys ^ mix32(step.long()))  # (B,)
    positions = torch.arange(C, dtype=torch.long, device=keys.device) * _POSITION
    return mix32((row[:, None] + positions) & MASK32)


def gumbel(keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise of each (position, token): keys (B, C, 1), tokens (n,) or (B, C, n) long ->
    (B, C, n) float32. 23 bits of the hash make u in (0, 1): the smallest 2**-24, the largest 1 - 2**-24."""
    u = ((mix32(keys ^ tokens) >> 9).float() + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u))


@dataclass
class Stats:
    """Online statistics of processed logits z over a set of tokens, per position (B, C)."""

    max: torch.Tensor  # max z (float32)
    sum: torch.Tensor  # sum exp(z - max)
    plogp: torch.Tensor  # sum exp(z - max) * (z - max): the entropy is log(sum) - plogp / sum
    argmax: torch.Tensor  # long: the token of the max (the lowest id among equal ones)
    race: torch.Tensor  # max of z + gumbel
    sample: torch.Tensor  # long: the token of the race's max
    nonfinite: torch.Tensor  # bool: a NaN among the logits

    def entropy(self) -> torch.Tensor:
        return self.sum.log() - self.plogp / self.sum


def stats_of(z: torch.Tensor, tokens: torch.Tensor, keys: torch.Tensor) -> Stats:
    """Stats of z (B, C, n) whose tokens are `tokens` ((n,) or (B, C, n) long); keys (B, C, 1)."""
    top, where = z.max(dim=-1)
    shifted = (z - top[..., None]).clamp_(min=FILL)  # (B, C, n); clamp: FILL - max must not be -inf
    e = shifted.exp()
    race, winner = (z + gumbel(keys, tokens)).max(dim=-1)
    tokens = tokens.expand(z.shape)
    total = e.sum(dim=-1)
    return Stats(
        top,
        total,
        (e * shifted).sum(dim=-1),
        tokens.gather(-1, where[..., None])[..., 0],
        race,
        tokens.gather(-1, winner[..., None])[..., 0],
        total.isnan(),  # a NaN logit makes the max, then every exp, NaN
    )


def merge(a: Stats, b: Stats) -> Stats:
    """The stats of the union of a's tokens and b's (b's tokens all come after a's: ties keep a's)."""
    top = torch.maximum(a.max, b.max)
    # <= 0; clamped where exp() is 0 anyway, so that a sum times a FILL-sized gap never makes inf * 0
    da, db = (a.max - top).clamp_(min=-GAP), (b.max - top).clamp_(min=-GAP)
    ca, cb = da.exp(), db.exp()
    plogp = ca * (a.plogp + a.sum * da) + cb * (b.plogp + b.sum * db)
    later, race_later = b.max > a.max, b.race > a.race
    return Stats(
        top,
        ca * a.sum + cb * b.sum,
        plogp,
        torch.where(later, b.argmax, a.argmax),
        torch.maximum(a.race, b.race),
        torch.where(race_later, b.sample, a.sample),
        a.nonfinite | b.nonfinite,
    )


def processed_chunk(
    logits: torch.Tensor, lo: int, hi: int, softcap: float | None, t: torch.Tensor, bans: torch.Tensor | None
) -> torch.Tensor:
    """z for tokens lo..hi: float32, soft-capped as the model does, divided by the temperature, banned
    tokens FILL. logits (B, C, V) in the weights' dtype, t (B,), bans (B, C, K) long V-padded -> (B, C, n)."""
    z = logits[..., lo:hi].to(torch.float32, copy=True)  # never in place on float32 logits
    if softcap is not None:
        z = z.div_(softcap).tanh_().mul_(softcap)
    z = z.div_(t[:, None, None])
    if bans is not None:
        n = hi - lo
        inside = torch.where((bans >= lo) & (bans < hi), bans - lo, n)  # (B, C, K); n: outside the chunk
        hit = torch.zeros((*z.shape[:-1], n + 1), dtype=torch.bool, device=z.device).scatter_(-1, inside, True)
        z = z.masked_fill_(hit[..., :n], FILL)
    return z


def vocabulary_stats(
    logits: torch.Tensor,
    softcap: float | None,
    t: torch.Tensor,
    bans: torch.Tensor | None,
    keys: torch.Tensor,
    chunk: int,
) -> Stats:
    """Pass 1 in plain torch: the stats over the whole vocabulary, chunk by chunk. keys (B, C) int64."""
    V = logits.shape[-1]
    stats = None
    for lo in range(0, V, chunk):
        hi = min(lo + chunk, V)
        z = processed_chunk(logits, lo, hi, softcap, t, bans)
        tokens = torch.arange(lo, hi, dtype=torch.long, device=logits.device)
        part = stats_of(z, tokens, keys[..., None])
        stats = part if stats is None else merge(stats, part)
    assert stats is not None
    return stats


def soft_embeddings(
    logits: torch.Tensor,
    softcap: float | None,
    t: torch.Tensor,
    bans: torch.Tensor | None,
    stats: Stats,
    weight: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Pass 2: softmax(z) @ weight, chunk by chunk, summed in float32. (B, C, V) -> (B, C, H) float32."""
    V = logits.shape[-1]
    total = None
    for lo in range(0, V, chunk):
        hi = min(lo + chunk, V)
        z = processed_chunk(logits, lo, hi, softcap, t, bans)
        p = z.sub_(stats.max[..., None]).exp_().div_(stats.sum[..., None])  # (B, C, n)
        part = torch.matmul(p.to(weight.dtype), weight[lo:hi]).float()
        total = part if total is None else total.add_(part)
    assert total is not None
    return total


def applied_bans(tiers: list[torch.Tensor], V: int) -> torch.Tensor | None:
    """The bans an unconstrained position takes: each tier's, unless with the tiers before it they would
    leave no token (as `ban_where_possible` decides over the vocabulary). Lists (B, C, K_i) -> (B, C, K)."""
    union = None
    for tier in tiers:
        both = tier if union is None else torch.cat([union, tier], dim=-1)
        possible = distinct_tokens(both, V) < V  # (B, C)
        applied = torch.where(possible[..., None], tier, V)
        union = applied if union is None else torch.cat([union, applied], dim=-1)
    return union


def distinct_tokens(tokens: torch.Tensor, V: int) -> torch.Tensor:
    """How many different tokens a V-padded list holds. (B, C, K) -> (B, C)."""
    ordered = tokens.sort(dim=-1).values
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    return (new & (ordered < V)).sum(dim=-1)


def allowed_stats(
    logits: torch.Tensor,
    softcap: float | None,
    t: torch.Tensor,
    allowed: torch.Tensor,
    tiers: list[torch.Tensor],
    keys: torch.Tensor,
) -> tuple[Stats, torch.Tensor, torch.Tensor]:
    """Stats of positions with an allowed list, over the list (sorted, V-padded) alone: the tiers of bans
    apply where they leave a token. Returns the stats, the list's z (B, C, K) and its tokens."""
    V = logits.shape[-1]
    keep = allowed < V
    keep[..., 1:] &= allowed[..., 1:] != allowed[..., :-1]  # a token listed twice counts once
    for tier in tiers:
        kept = keep & ~(allowed[..., :, None] == tier[..., None, :]).any(dim=-1)  # (B, C, K)
        keep = torch.where(kept.any(dim=-1, keepdim=True), kept, keep)
    tokens = allowed.clamp(max=V - 1)
    z = logits.gather(-1, tokens).float()
    if softcap is not None:
        z = z.div_(softcap).tanh_().mul_(softcap)
    z = z.div_(t[:, None, None]).masked_fill_(~keep, FILL)
    return stats_of(z, tokens, keys[..., None]), z, tokens


def pick(where: torch.Tensor, a: Stats, b: Stats) -> Stats:
    """a's stats where `where` (B, C) holds, b's elsewhere."""
    fields = Stats.__dataclass_fields__
    return Stats(**{f: torch.where(where, getattr(a, f), getattr(b, f)) for f in fields})


def fast_tile(
    logits: torch.Tensor,
    state: TileState,
    keys: torch.Tensor,
    softcap: float | None,
    weight: torch.Tensor,
    scale: torch.Tensor,
    chunk: int | None = None,
) -> tuple[TileOutput, torch.Tensor]:
    """One fast step of a tile. logits (B, C, V) as the lm_head gives them (not soft-capped, any dtype),
    keys (B,) int64 from `noise_key`, weight (V, H) and scale: the embedding's. Returns the rows' results
    and the next step's self-conditioning input softmax(z) @ weight * scale (B, C, H) in weight's dtype."""
    B, C, V = logits.shape
    if chunk is None:
        chunk = CHUNK if logits.is_cuda else max(256, min(CHUNK, CPU_CHUNK_ELEMENTS // (B * C)))
    t = temperature(state.step, state.params)  # (B,)
    position = position_keys(keys, state.step, C)  # (B, C)
    c = state.constraint
    tiers = (
        []
        if c is None
        else [x for x in (c.banned_by_pins, c.banned_by_commits, peer_tokens(state, V)) if x is not None]
    )
    bans = applied_bans(tiers, V)
    stats = first_pass(logits, softcap, t, bans, position, chunk)
    soft = soft_embeddings(logits, softcap, t, bans, stats, weight, chunk)
    if c is not None and c.allowed is not None and c.constrained is not None:
        listed, z, tokens = allowed_stats(logits, softcap, t, c.allowed, tiers, position)
        stats = pick(c.constrained, listed, stats)
        p = z.sub_(listed.max[..., None]).exp_().div_(listed.sum[..., None])  # (B, C, K)
        own = torch.einsum("bck,bckh->bch", p.to(weight.dtype), weight[tokens]).float()
        soft = torch.where(c.constrained[..., None], own, soft)
    entropy = torch.where(stats.nonfinite, torch.nan, stats.entropy())  # NaN flags the row (as exact mode)
    sampled, argmax = stats.sample, stats.argmax
    if c is not None:  # pinned: one-hot, zero entropy, always its token (whatever its logits hold)
        entropy = torch.where(c.pinned, 0.0, entropy)
        sampled = torch.where(c.pinned, c.pinned_token, sampled)
        argmax = torch.where(c.pinned, c.pinned_token, argmax)
        soft = torch.where(c.pinned[..., None], weight[c.pinned_token].float(), soft)
    renoise = mix32(position ^ _RENOISE) % V  # (B, C)
    return finish_step(sampled, argmax, entropy, state, renoise), soft.to(weight.dtype) * scale.to(weight.dtype)


def first_pass(
    logits: torch.Tensor,
    softcap: float | None,
    t: torch.Tensor,
    bans: torch.Tensor | None,
    keys: torch.Tensor,
    chunk: int,
) -> Stats:
    """Pass 1: the Triton kernel on a CUDA device when Triton is installed, plain torch otherwise."""
    if logits.is_cuda:
        from worker.engine import fast_triton

        if fast_triton.available():
            return fast_triton.vocabulary_stats(logits, softcap, t, bans, keys)
    return vocabulary_stats(logits, softcap, t, bans, keys, chunk)
