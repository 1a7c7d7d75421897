"""The per-row sampler the engine used before its batched step (worker/engine/sampler.py): one row at a
time, `torch.multinomial`, boolean indexing, a history of argmax canvases. Test-only: the reference the
batched step must equal bit for bit on the same rows. Kept as it was, with the per-canvas constraints it
read (`canvas_constraint`), so the comparison is against the code that served before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import Categorical

from worker.engine.params import Request


@dataclass
class CanvasConstraint:
    """Pinned tokens, allowed-token lists and all-different peers for the positions of one canvas
    (indices into the canvas)."""

    pinned_index: torch.Tensor  # (P,) long
    pinned_token: torch.Tensor  # (P,) long
    allowed: dict[int, torch.Tensor]  # canvas position -> (K,) allowed token ids
    free: torch.Tensor  # (C,) bool: positions that are not pinned
    peers: torch.Tensor | None = None  # (C, C) bool: positions whose tokens must differ (a `distinct` group)
    # Tokens fixed for the canvas's life: (positions, tokens) banned by pinned peers, then by committed ones.
    banned: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def empty(self) -> bool:
        return self.pinned_index.numel() == 0 and not self.allowed and self.peers is None and self.banned is None


@dataclass
class StepOutput:
    canvas: torch.Tensor  # (1, C) next input canvas
    argmax: torch.Tensor  # (1, C) argmax of the processed logits: what a commit would write
    processed: torch.Tensor  # (1, C, V) temperature-scaled logits (source of the self-conditioning)
    converged: bool
    accepted: torch.Tensor | None = None  # (1, C) bool: positions whose sample the next canvas keeps


def temperature(remaining: int, total: int, t_min: float, t_max: float, device: torch.device) -> torch.Tensor:
    """Linear schedule t_min + (t_max - t_min) * remaining / total, computed as transformers does (float32)."""
    ratio = torch.tensor(remaining, dtype=torch.int32, device=device) / total
    return t_min + (t_max - t_min) * ratio


def apply_constraint(logits: torch.Tensor, constraint: CanvasConstraint | None) -> torch.Tensor:
    """Pinned positions become one-hot (zero entropy: always accepted, free of the entropy budget);
    constrained positions keep only their allowed tokens. (1, C, V) -> (1, C, V)."""
    if constraint is None or constraint.empty:
        return logits
    logits = logits.clone()
    fill = torch.finfo(logits.dtype).min
    for position, tokens in constraint.allowed.items():
        kept = logits[0, position, tokens]
        logits[0, position] = fill
        logits[0, position, tokens] = kept
    if constraint.pinned_index.numel():
        logits[0, constraint.pinned_index] = fill
        logits[0, constraint.pinned_index, constraint.pinned_token] = 0.0
    return logits


def exclude_peer_tokens(
    logits: torch.Tensor, canvas: torch.Tensor, held: torch.Tensor | None, constraint: CanvasConstraint | None
) -> torch.Tensor:
    """All-different groups: a free position may not take a token that a peer holds. Three tiers, each
    applied where it leaves the position some token (else the position keeps the logits it had before it):
    pinned peers (in the canvas or beyond it), peers committed in earlier canvases, and peers that kept
    their sample in the previous step (`held`, (1, C) bool). So a wrong earlier choice can never push a
    position onto a pinned token's repeat. (1, C, V) -> (1, C, V)."""
    if constraint is None or (constraint.peers is None and constraint.banned is None):
        return logits
    pinned, committed = constraint.banned or ((_NONE, _NONE), (_NONE, _NONE))
    kept = []
    if constraint.peers is not None and held is not None:
        holding = held[0] & constraint.free  # free peers that kept their sample
        position, peer = (constraint.peers & constraint.free[:, None] & holding[None, :]).nonzero(as_tuple=True)
        kept.append((position, canvas[0, peer]))
    return _ban(_ban(_ban(logits, [pinned]), [committed]), kept)


_NONE = torch.zeros(0, dtype=torch.long)


def _ban(logits: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """`logits` with each (position, token) pair at the fill value, except at positions left with none."""
    if not pairs or sum(p.numel() for p, _ in pairs) == 0:
        return logits
    position = torch.cat([p.to(logits.device) for p, _ in pairs])
    token = torch.cat([t.to(logits.device) for _, t in pairs])
    fill = torch.finfo(logits.dtype).min
    masked = logits.clone()
    masked[0, position, token] = fill
    stuck = masked[0].max(dim=-1).values <= fill  # (C,)
    masked[0, stuck] = logits[0, stuck]
    return masked


def accept_lowest_entropy(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """Accept the lowest-entropy positions whose summed entropy, less the largest, stays within `bound`
    (the entropy-bound sampler, arXiv:2505.24857). At least one position is always accepted. (1, C) -> bool."""
    sorted_entropy, order = torch.sort(entropy, dim=-1, descending=False)
    selected = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= bound
    return torch.scatter(torch.zeros_like(selected), dim=-1, index=order, src=selected)


def is_stable(history: torch.Tensor, argmax: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Whether `argmax` equals each of the last S argmax canvases; returns the updated history (S, 1, C)."""
    if history.shape[0] == 0:
        return True, history
    stable = bool((history == argmax[None]).all())
    history = torch.roll(history, shifts=-1, dims=0)
    history[-1] = argmax
    return stable, history


def denoise_step(
    logits: torch.Tensor,
    canvas: torch.Tensor,
    remaining: int,
    params: object,
    generator: torch.Generator,
    constraint: CanvasConstraint | None,
    history: torch.Tensor,
    held: torch.Tensor | None = None,
) -> tuple[StepOutput, torch.Tensor]:
    """One step of one row. logits: (1, C, V) fp32 soft-capped; canvas: (1, C); held: (1, C) bool, the
    positions the previous step kept (None on a canvas's first step). Returns (output, history)."""
    t = temperature(remaining, params.max_denoising_steps, params.t_min, params.t_max, logits.device)
    processed = exclude_peer_tokens(apply_constraint(logits, constraint), canvas, held, constraint) / t
    vocab = processed.shape[-1]
    probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
    sampled = torch.multinomial(probs.view(-1, vocab), num_samples=1, generator=generator).view(canvas.shape)
    del probs
    argmax = torch.argmax(processed, dim=-1)  # (1, C)
    entropy = Categorical(logits=processed, validate_args=False).entropy()  # (1, C)
    if getattr(params, "order", "entropy") == "left_to_right":
        step = params.max_denoising_steps - remaining
        return left_to_right_step(sampled, argmax, processed, canvas, step, constraint, generator), history
    accepted = accept_lowest_entropy(entropy, params.entropy_bound)
    accepted_canvas = torch.where(accepted, sampled, canvas)
    noise = torch.randint(0, vocab, canvas.shape, device=canvas.device, generator=generator)
    next_canvas = torch.where(~accepted, noise, accepted_canvas)
    stable, history = is_stable(history, argmax)
    free_entropy = entropy if constraint is None or constraint.empty else entropy[:, constraint.free]
    confident = free_entropy.numel() == 0 or bool(free_entropy.mean(dim=-1) < params.confidence_threshold)
    return StepOutput(next_canvas, argmax, processed, stable and confident, accepted), history


def left_to_right_step(
    sampled: torch.Tensor,
    argmax: torch.Tensor,
    processed: torch.Tensor,
    canvas: torch.Tensor,
    step: int,
    constraint: CanvasConstraint | None,
    generator: torch.Generator,
) -> StepOutput:
    """What an autoregressive decoder does, on the same model: at step k the k leftmost free positions are
    locked (they keep their tokens), the next one takes its sample, the rest is noise. Pinned positions
    count as given. The committed canvas is the locked tokens (argmax only where the budget ran out)."""
    C = canvas.shape[-1]
    free = torch.ones(C, dtype=torch.bool, device=canvas.device) if constraint is None else constraint.free
    rank = torch.cumsum(free.long(), dim=0) - 1  # index among the free positions
    locked = ~free | (rank < step)
    accepted = ~free | (rank <= step)
    noise = torch.randint(0, processed.shape[-1], canvas.shape, device=canvas.device, generator=generator)
    next_canvas = torch.where(locked[None], canvas, torch.where(accepted[None], sampled, noise))
    if constraint is not None and constraint.pinned_index.numel():
        next_canvas[0, constraint.pinned_index] = constraint.pinned_token
    committed = torch.where(accepted[None], next_canvas, argmax)
    done = bool(accepted.all())
    return StepOutput(next_canvas, committed, processed, done, accepted[None])


def canvas_constraint(
    request: Request, index: int, C: int, device: torch.device, committed: list[int] | None = None
) -> CanvasConstraint | None:
    """The request's pinned, allowed and all-different positions that fall in canvas `index`, as canvas
    indices. A `distinct` group's pinned members, and those `committed` in earlier canvases, ban their tokens
    from its free members inside this canvas."""
    lo, hi = index * C, (index + 1) * C
    pinned = {o - lo: t for o, t in request.pinned.items() if lo <= o < hi}
    allowed = {o - lo: torch.tensor(ts, device=device) for o, ts in request.allowed.items() if lo <= o < hi}
    peers = distinct_peers(request.distinct, lo, C, device)
    banned = fixed_bans(request, lo, C, committed or [], device)
    if not pinned and not allowed and peers is None and banned is None:
        return None
    free = torch.ones(C, dtype=torch.bool, device=device)
    index_t = torch.tensor(sorted(pinned), dtype=torch.long, device=device)
    free[index_t] = False
    tokens = torch.tensor([pinned[i] for i in sorted(pinned)], dtype=torch.long, device=device)
    return CanvasConstraint(index_t, tokens, allowed, free, peers, banned)


def fixed_bans(
    request: Request, lo: int, C: int, committed: list[int], device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """For each free group member inside the canvas at `lo`, the tokens its peers hold for the canvas's
    whole life, as (positions, tokens): those of pinned peers (anywhere), then those of peers committed
    in earlier canvases."""
    pinned: set[tuple[int, int]] = set()
    earlier: set[tuple[int, int]] = set()
    for group in request.distinct:
        inside = [o for o in group if lo <= o < lo + C and o not in request.pinned]
        for peer in group:
            if peer in request.pinned:
                pinned |= {(o - lo, request.pinned[peer]) for o in inside}
            elif peer < lo:
                earlier |= {(o - lo, committed[peer]) for o in inside}
    if not pinned and not earlier:
        return None
    return _pairs(pinned, device), _pairs(earlier, device)


def _pairs(pairs: set[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ordered = sorted(pairs)
    positions = torch.tensor([p for p, _ in ordered], dtype=torch.long, device=device)
    return positions, torch.tensor([t for _, t in ordered], dtype=torch.long, device=device)


def distinct_peers(groups: tuple[tuple[int, ...], ...], lo: int, C: int, device: torch.device) -> torch.Tensor | None:
    """(C, C) bool: which positions of the canvas starting at output offset `lo` share a group; None if none do."""
    peers = torch.zeros(C, C, dtype=torch.bool)
    for group in groups:
        inside = torch.tensor([o - lo for o in group if lo <= o < lo + C], dtype=torch.long)
        if inside.numel() > 1:
            peers[inside[:, None], inside[None, :]] = True
    peers.fill_diagonal_(False)
    return peers.to(device) if bool(peers.any()) else None
