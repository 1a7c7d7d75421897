"""A request's pinned, allowed and all-different positions that fall in one canvas, as the tensors a slot
holds for that canvas's life. Built on the host once per canvas; the sampler step only reads them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.engine.params import Request


@dataclass
class CanvasConstraint:
    """One canvas's constraints (indices into the canvas). Token lists are padded with V."""

    pinned: torch.Tensor  # (C,) bool
    pinned_token: torch.Tensor  # (C,) long, 0 where not pinned
    allowed: torch.Tensor | None  # (C, K) long: the only tokens a position may take (V-padded)
    constrained: torch.Tensor | None  # (C,) bool: positions with an allowed list
    banned_by_pins: torch.Tensor | None  # (C, K) long: tokens that pinned group peers hold
    banned_by_commits: torch.Tensor | None  # (C, K) long: tokens of group peers committed earlier
    peers: torch.Tensor | None  # (C, C) bool: positions that share a `distinct` group


def canvas_constraint(
    request: Request, index: int, C: int, V: int, device: torch.device, committed: list[int] | None = None
) -> CanvasConstraint | None:
    """The request's constraints that fall in canvas `index`, or None if it has none there. A `distinct`
    group's pinned members, and those `committed` in earlier canvases, ban their tokens from its free
    members inside this canvas."""
    if not request.pinned and not request.allowed and not request.distinct:
        return None
    lo, hi = index * C, (index + 1) * C
    pinned = {o - lo: t for o, t in request.pinned.items() if lo <= o < hi}
    allowed = {o - lo: ts for o, ts in request.allowed.items() if lo <= o < hi}
    peers = distinct_peers(request.distinct, lo, C)
    by_pins, by_commits = fixed_bans(request, lo, C, committed or [])
    if not pinned and not allowed and peers is None and not by_pins and not by_commits:
        return None
    pinned_mask = torch.zeros(C, dtype=torch.bool)
    pinned_token = torch.zeros(C, dtype=torch.long)
    for offset, token in pinned.items():
        pinned_mask[offset], pinned_token[offset] = True, token
    constrained = torch.zeros(C, dtype=torch.bool)
    constrained[list(allowed)] = True

    def put(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return CanvasConstraint(
        put(pinned_mask),  # type: ignore[arg-type]
        put(pinned_token),  # type: ignore[arg-type]
        put(padded_lists(allowed, C, V)),
        put(constrained) if allowed else None,
        put(padded_lists(by_pins, C, V)),
        put(padded_lists(by_commits, C, V)),
        put(peers),
    )


def padded_lists(tokens: dict[int, tuple[int, ...] | set[int]], C: int, V: int) -> torch.Tensor | None:
    """{position: tokens} -> (C, K) long padded with V (K: the longest list); None if empty."""
    if not tokens:
        return None
    K = max(len(ts) for ts in tokens.values())
    out = torch.full((C, K), V, dtype=torch.long)
    for position, ts in tokens.items():
        out[position, : len(ts)] = torch.tensor(sorted(ts), dtype=torch.long)
    return out


def fixed_bans(
    request: Request, lo: int, C: int, committed: list[int]
) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """For each free group member inside the canvas at `lo`, the tokens its peers hold for the canvas's
    whole life: those of pinned peers (anywhere), then those of peers committed in earlier canvases."""
    by_pins: dict[int, set[int]] = {}
    by_commits: dict[int, set[int]] = {}
    for group in request.distinct:
        inside = [o for o in group if lo <= o < lo + C and o not in request.pinned]
        for peer in group:
            if peer in request.pinned:
                for o in inside:
                    by_pins.setdefault(o - lo, set()).add(request.pinned[peer])
            elif peer < lo:
                for o in inside:
                    by_commits.setdefault(o - lo, set()).add(committed[peer])
    return by_pins, by_commits


def distinct_peers(groups: tuple[tuple[int, ...], ...], lo: int, C: int) -> torch.Tensor | None:
    """(C, C) bool: which positions of the canvas starting at output offset `lo` share a group; None if none do."""
    peers = torch.zeros(C, C, dtype=torch.bool)
    for group in groups:
        inside = torch.tensor([o - lo for o in group if lo <= o < lo + C], dtype=torch.long)
        if inside.numel() > 1:
            peers[inside[:, None], inside[None, :]] = True
    peers.fill_diagonal_(False)
    return peers if bool(peers.any()) else None
