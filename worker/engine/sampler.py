"""One batched denoising step over a tile of rows: temperature, constraints, sampling, entropy-bound
acceptance, renoising and the stop test. No model here (the runner hands in logits) and no host sync:
no `.item()`, no boolean indexing, no Python branch on a tensor's value, so the step compiles with
`torch.compile(fullgraph=True)`. What the host reads afterwards is `TileOutput.flags`, one byte per row.

Exact mode: every full-vocabulary tensor comes from the same ATen kernels, in the same order, as in
transformers' `generate()` (temperature, softmax, `multinomial`'s exponential race, `Categorical`'s
entropy), so a row's values, its samples and its random stream are generate()'s bit for bit. The random
draws themselves happen outside the step, from each row's own generator (`draw_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.engine.cpu_draws import exponential_

FILL = torch.finfo(torch.float32).min  # a forbidden token's logit (what apply_constraint always wrote)
CONVERGED, NONFINITE = 1, 2  # bits of TileOutput.flags


@dataclass
class TileParams:
    """Each row's sampling parameters, one entry per row of the tile."""

    steps: torch.Tensor  # (B,) int32: max_denoising_steps
    t_min: torch.Tensor  # (B,) float32
    t_span: torch.Tensor  # (B,) float32: t_max - t_min, rounded once from float64 as generate() rounds it
    entropy_bound: torch.Tensor  # (B,) float32
    confidence: torch.Tensor  # (B,) float32: confidence_threshold
    stability: torch.Tensor  # (B,) int32: stability_threshold
    left_to_right: torch.Tensor  # (B,) bool: order == "left_to_right"


@dataclass
class TileConstraint:
    """Pinned tokens, allowed tokens and all-different bans of a tile's canvases. Token lists are padded
    with V (the vocabulary size), which matches no token. A field is None when no row of the tile uses it."""

    pinned: torch.Tensor  # (B, C) bool
    pinned_token: torch.Tensor  # (B, C) long
    allowed: torch.Tensor | None = None  # (B, C, K) long: the only tokens a constrained position may take
    constrained: torch.Tensor | None = None  # (B, C) bool: positions with an allowed list
    banned_by_pins: torch.Tensor | None = None  # (B, C, K) long: tokens that pinned group peers hold
    banned_by_commits: torch.Tensor | None = None  # (B, C, K) long: tokens held by peers in earlier canvases
    peers: torch.Tensor | None = None  # (B, C, C) bool: positions whose tokens must differ


@dataclass
class TileState:
    """What a step reads of each row: its canvas, what the last step left, its parameters."""

    canvas: torch.Tensor  # (B, C) long: the noisy canvas the decoder saw
    argmax: torch.Tensor  # (B, C) long: the previous step's argmax canvas, -1 on a canvas's first step
    held: torch.Tensor  # (B, C) bool: positions whose sample the previous step kept
    step: torch.Tensor  # (B,) int32: steps taken on this canvas before this one
    run: torch.Tensor  # (B,) int32: how many steps in a row ended with the previous argmax
    params: TileParams
    constraint: TileConstraint | None = None
    any_left_to_right: bool = True  # host-known: False skips the left-to-right rule (no row uses it)


@dataclass
class TileDraws:
    """A step's random numbers, drawn from each row's generator in generate()'s order."""

    exponential: torch.Tensor  # (B, C, V) float32: multinomial's Exp(1) race draws
    renoise: torch.Tensor  # (B, C) long: uniform tokens for the positions not accepted


@dataclass
class TileOutput:
    """What a step leaves of each row (small: no full-vocabulary tensor)."""

    canvas: torch.Tensor  # (B, C) the next input canvas
    argmax: torch.Tensor  # (B, C) what a commit writes (argmax of the processed logits)
    held: torch.Tensor  # (B, C) bool: positions whose sample the next canvas keeps
    step: torch.Tensor  # (B,) int32
    run: torch.Tensor  # (B,) int32
    flags: torch.Tensor  # (B,) uint8: CONVERGED (stop criterion met) | NONFINITE (NaN in the logits)


def draw_noise(generators: list[torch.Generator], C: int, V: int, device: torch.device) -> TileDraws:
    """Each row's draws from its own generator, in the order generate() consumes them for one step:
    `multinomial`'s Exp(1) tensor (what ATen's one-sample path draws), then the renoise tokens."""
    draws = empty_draws(len(generators), C, V, device)
    draw_rows(draws, generators, range(len(generators)))
    return draws


def empty_draws(B: int, C: int, V: int, device: torch.device) -> TileDraws:
    exponential = torch.empty((B, C, V), dtype=torch.float32, device=device)
    return TileDraws(exponential, torch.empty((B, C), dtype=torch.long, device=device))


def draw_rows(draws: TileDraws, generators: list[torch.Generator], rows: range) -> None:
    """Fill rows `rows` of `draws` from their generators. A CPU generator draws serially (one core), so
    the engine may run disjoint row ranges in threads side by side; each generator is used by one."""
    V = draws.exponential.shape[-1]
    with torch.inference_mode():
        for row in rows:
            exponential_(draws.exponential[row], generators[row])  # ATen's draws, vectorised on the CPU
            draws.renoise[row].random_(0, V, generator=generators[row])


def temperature(step: torch.Tensor, params: TileParams) -> torch.Tensor:
    """t_min + (t_max - t_min) * remaining / N per row, in float32 as generate()'s schedule computes it. (B,)"""
    remaining = params.steps - step  # (B,) int32
    return params.t_min + params.t_span * (remaining / params.steps)


def token_mask(tokens: torch.Tensor, V: int) -> torch.Tensor:
    """(B, C, K) token ids padded with V -> (B, C, V) bool, True at the listed tokens."""
    B, C, _ = tokens.shape
    mask = torch.zeros((B, C, V + 1), dtype=torch.bool, device=tokens.device)
    return mask.scatter_(-1, tokens, True)[..., :V]


def ban_where_possible(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """Banned tokens get FILL, except at positions where that would leave no token (those keep their
    logits). In place. logits (B, C, V), banned (B, C, V) bool."""
    alive = ((logits > FILL) & ~banned).any(dim=-1, keepdim=True)  # (B, C, 1)
    return logits.masked_fill_(banned & alive, FILL)


def constrain(logits: torch.Tensor, state: TileState) -> torch.Tensor:
    """Allowed lists, then pinned tokens (one-hot: zero entropy, always accepted, free of the entropy
    budget), then the all-different bans in three tiers: tokens of pinned peers, of peers committed in
    earlier canvases, of free peers whose sample the previous step kept. In place. (B, C, V)."""
    c = state.constraint
    if c is None:
        return logits
    V = logits.shape[-1]
    if c.allowed is not None and c.constrained is not None:
        keep = token_mask(c.allowed, V) | ~c.constrained[..., None]  # (B, C, V)
        logits.masked_fill_(~keep, FILL)
    logits.masked_fill_(c.pinned[..., None], FILL)
    at_token = logits.gather(-1, c.pinned_token[..., None])  # (B, C, 1)
    logits.scatter_(-1, c.pinned_token[..., None], torch.where(c.pinned[..., None], 0.0, at_token))
    for banned in (c.banned_by_pins, c.banned_by_commits):
        if banned is not None:
            ban_where_possible(logits, token_mask(banned, V))
    tokens = peer_tokens(state, V)
    if tokens is not None:
        ban_where_possible(logits, token_mask(tokens, V))
    return logits


def peer_tokens(state: TileState, V: int) -> torch.Tensor | None:
    """The third tier of bans: for each free position, the tokens of its free group peers whose sample the
    previous step kept, V-padded (B, C, C); None when the tile has no groups."""
    c = state.constraint
    if c is None or c.peers is None:
        return None
    free = ~c.pinned
    kept = c.peers & free[:, :, None] & (state.held & free)[:, None, :]  # (B, C, C): position, peer
    return torch.where(kept, state.canvas[:, None, :], V)


def exponential_race(probs: torch.Tensor, exponential: torch.Tensor) -> torch.Tensor:
    """argmax(p / q), q ~ Exp(1): one sample per distribution. This is what ATen's `multinomial` does for
    one sample (aten/src/ATen/native/Distributions.cpp, the "fast path"), so the same q gives the same
    token. Overwrites `exponential`. (B, C, V) -> (B, C)."""
    return torch.div(probs, exponential, out=exponential).argmax(dim=-1)


def categorical_entropy(processed: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """`Categorical(logits=processed).entropy()` with the same kernels in the same order (logsumexp as
    ATen computes it, normalise, softmax, clamp, p * log p, sum), bit for bit, using `work` as scratch.
    (B, C, V) -> (B, C)."""
    maxes = processed.amax(dim=-1, keepdim=True)  # (B, C, 1)
    maxes.masked_fill_(maxes.abs() == torch.inf, 0)
    total = torch.sub(processed, maxes, out=work).exp_().sum(dim=-1, keepdim=True)
    normalized = torch.sub(processed, total.log_().add_(maxes), out=work)  # (B, C, V) log-probabilities
    probs = torch.softmax(normalized, dim=-1)
    return -normalized.clamp_(min=FILL).mul_(probs).sum(dim=-1)


def accept_lowest_entropy(entropy: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Accept the lowest-entropy positions whose summed entropy, less the largest, stays within the row's
    bound (the entropy-bound sampler, arXiv:2505.24857); at least one position is always accepted.
    entropy (B, C), bound (B,) -> (B, C) bool."""
    sorted_entropy, order = torch.sort(entropy, dim=-1, descending=False)
    selected = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= bound[:, None]
    return torch.scatter(torch.zeros_like(selected), dim=-1, index=order, src=selected)


def mean_free_entropy(entropy: torch.Tensor, c: TileConstraint | None) -> torch.Tensor:
    """Mean entropy over the positions that are not pinned (B,); NaN for a row with none free. Pinned
    positions have zero entropy and would otherwise make a mostly pinned canvas look confident."""
    if c is None:
        return entropy.mean(dim=-1)
    free = ~c.pinned
    return torch.where(free, entropy, 0.0).sum(dim=-1) / free.sum(dim=-1)


def left_to_right(
    sampled: torch.Tensor, argmax: torch.Tensor, state: TileState, renoise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What an autoregressive decoder does on the same model: at step k the k leftmost free positions are
    locked (they keep their tokens), the next one takes its sample, the rest is noise; pinned positions
    count as given. Commits the locked tokens (the argmax only where the budget ran out).
    Returns (canvas, committed, accepted) (B, C) and done (B,)."""
    c = state.constraint
    pinned = c.pinned if c is not None else torch.zeros_like(state.held)
    free = ~pinned
    rank = torch.cumsum(free.long(), dim=-1) - 1  # (B, C): index among the free positions
    step = state.step[:, None]
    locked = pinned | (rank < step)
    accepted = pinned | (rank <= step)
    canvas = torch.where(locked, state.canvas, torch.where(accepted, sampled, renoise))
    if c is not None:
        canvas = torch.where(pinned, c.pinned_token, canvas)
    return canvas, torch.where(accepted, canvas, argmax), accepted, accepted.all(dim=-1)


def denoise_tile(logits: torch.Tensor, state: TileState, draws: TileDraws) -> tuple[TileOutput, torch.Tensor]:
    """One step of every row of a tile. logits: (B, C, V) float32, soft-capped; they are overwritten with
    the processed (temperature-scaled) logits, the self-conditioning source, and draws.exponential is
    overwritten too. Returns the rows' results and probs, softmax(processed) (B, C, V) in float32."""
    t = temperature(state.step, state.params)  # (B,)
    processed = constrain(logits, state).div_(t[:, None, None])  # (B, C, V)
    probs = torch.softmax(processed, dim=-1, dtype=torch.float32)  # (B, C, V)
    sampled = exponential_race(probs, draws.exponential)  # (B, C)
    argmax = processed.argmax(dim=-1)  # (B, C)
    entropy = categorical_entropy(processed, work=draws.exponential)  # (B, C)
    return finish_step(sampled, argmax, entropy, state, draws.renoise), probs


def finish_step(
    sampled: torch.Tensor, argmax: torch.Tensor, entropy: torch.Tensor, state: TileState, renoise: torch.Tensor
) -> TileOutput:
    """What a step decides from each position's sample, argmax and entropy (B, C): which positions it
    accepts, the next canvas (`renoise` elsewhere), the stop test. Shared by the exact and fast modes."""
    accepted = accept_lowest_entropy(entropy, state.params.entropy_bound)  # (B, C)
    canvas = torch.where(accepted, sampled, renoise)
    run = torch.where((argmax == state.argmax).all(dim=-1), state.run + 1, 1)  # (B,)
    stable = run > state.params.stability  # the argmax equals each of the last `stability` ones
    mean = mean_free_entropy(entropy, state.constraint)
    confident = mean.isnan() | (mean < state.params.confidence)  # NaN: every position pinned
    converged = stable & confident

    if state.any_left_to_right:
        l2r = state.params.left_to_right  # (B,)
        l2r_canvas, committed, l2r_accepted, done = left_to_right(sampled, argmax, state, renoise)
        canvas = torch.where(l2r[:, None], l2r_canvas, canvas)
        argmax = torch.where(l2r[:, None], committed, argmax)
        accepted = torch.where(l2r[:, None], l2r_accepted, accepted)
        converged = torch.where(l2r, done, converged)
    nonfinite = entropy.isnan().any(dim=-1)  # NaN logits make NaN entropies
    flags = converged.to(torch.uint8) | (nonfinite.to(torch.uint8) * NONFINITE)
    return TileOutput(canvas, argmax, accepted, state.step + 1, run, flags)
