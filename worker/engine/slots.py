"""Per-row state of the running requests, in tensors indexed by slot (one slot per admitted row).

The sampler reads a tile of slots (`gather`) and the engine writes the step's results back (`store`);
nothing here reads a tensor's value on the host. Constraint tensors exist only for slots whose current
canvas has constraints (`kinds`), so unconstrained tiles never touch them.
"""

from __future__ import annotations

import torch

from worker.engine.constraints import CanvasConstraint
from worker.engine.params import SamplingParams
from worker.engine.sampler import TileConstraint, TileOutput, TileParams, TileState

_LISTS = ("allowed", "banned_by_pins", "banned_by_commits")  # (S, C, K) token lists, K grows on demand


class Slots:
    """Canvas, argmax, self-conditioning input, stop state, parameters and constraints of `capacity` rows."""

    def __init__(self, capacity: int, C: int, H: int, V: int, dtype: torch.dtype, device: torch.device) -> None:
        S, self.C, self.V, self.device = capacity, C, V, device
        self.free = list(range(capacity - 1, -1, -1))
        long = dict(dtype=torch.long, device=device)
        self.canvas = torch.zeros((S, C), **long)  # (S, C)
        self.argmax = torch.full((S, C), -1, **long)  # (S, C)
        self.soft = torch.zeros((S, C, H), dtype=dtype, device=device)  # (S, C, H)
        self.held = torch.zeros((S, C), dtype=torch.bool, device=device)  # (S, C)
        self.step = torch.zeros(S, dtype=torch.int32, device=device)  # (S,)
        self.run = torch.zeros(S, dtype=torch.int32, device=device)  # (S,)
        self.params = TileParams(
            steps=torch.ones(S, dtype=torch.int32, device=device),
            t_min=torch.zeros(S, dtype=torch.float32, device=device),
            t_span=torch.zeros(S, dtype=torch.float32, device=device),
            entropy_bound=torch.zeros(S, dtype=torch.float32, device=device),
            confidence=torch.zeros(S, dtype=torch.float32, device=device),
            stability=torch.zeros(S, dtype=torch.int32, device=device),
            left_to_right=torch.zeros(S, dtype=torch.bool, device=device),
        )
        self.pinned = torch.zeros((S, C), dtype=torch.bool, device=device)
        self.pinned_token = torch.zeros((S, C), **long)
        self.constrained = torch.zeros((S, C), dtype=torch.bool, device=device)
        self.lists = {name: torch.full((S, C, 0), V, **long) for name in _LISTS}  # (S, C, K)
        self.peers: torch.Tensor | None = None  # (S, C, C) bool, made when a request first needs it
        self.kinds: list[frozenset[str]] = [frozenset()] * S  # host-known: which constraints a slot uses
        self.left_to_right = [False] * S

    # ---- host side: admission and canvas starts (never inside a step) -----------------------------------

    def acquire(self, params: SamplingParams) -> int:
        """The lowest free slot (so running rows stay packed and decoder passes cover few idle slots)."""
        slot = min(self.free)
        self.free.remove(slot)
        values = {
            "steps": params.max_denoising_steps,
            "t_min": params.t_min,
            "t_span": params.t_max - params.t_min,  # float64, rounded to float32 once, as generate() does
            "entropy_bound": params.entropy_bound,
            "confidence": params.confidence_threshold,
            "stability": params.stability_threshold,
            "left_to_right": params.order == "left_to_right",
        }
        for name, value in values.items():
            getattr(self.params, name)[slot] = value
        self.left_to_right[slot] = params.order == "left_to_right"
        return slot

    def release(self, slot: int) -> None:
        """A free slot is still computed (and dropped) in passes that cover it: no stale NaN may stay in
        its self-conditioning input, or the K/V it writes there would carry it (see SlotKV.reset)."""
        self.soft[slot] = 0
        self.free.append(slot)

    def start_canvas(self, slot: int, canvas: torch.Tensor, constraint: CanvasConstraint | None) -> None:
        """A fresh canvas (C,) in `slot`: pinned tokens written in, no self-conditioning, no history."""
        self.argmax[slot] = -1
        self.soft[slot] = 0
        self.held[slot] = False
        self.step[slot] = 0
        self.run[slot] = 0
        self._clear_constraint(slot)
        if constraint is None:
            self.canvas[slot] = canvas
            return
        self.canvas[slot] = torch.where(constraint.pinned, constraint.pinned_token, canvas)
        self.pinned[slot] = constraint.pinned
        self.pinned_token[slot] = constraint.pinned_token
        kinds = {"pinned"}
        if constraint.constrained is not None:
            self.constrained[slot] = constraint.constrained
        for name in _LISTS:
            tokens = getattr(constraint, name)
            if tokens is not None:
                self._put_list(name, slot, tokens)
                kinds.add(name)
        if constraint.peers is not None:
            if self.peers is None:
                self.peers = torch.zeros((len(self.kinds), self.C, self.C), dtype=torch.bool, device=self.device)
            self.peers[slot] = constraint.peers
            kinds.add("peers")
        self.kinds[slot] = frozenset(kinds)

    def _clear_constraint(self, slot: int) -> None:
        """No constraint in `slot`: a tile that mixes it with constrained rows reads neutral values."""
        self.kinds[slot] = frozenset()
        self.pinned[slot] = False
        self.pinned_token[slot] = 0
        self.constrained[slot] = False
        for table in self.lists.values():
            table[slot] = self.V
        if self.peers is not None:
            self.peers[slot] = False

    def _put_list(self, name: str, slot: int, tokens: torch.Tensor) -> None:
        table = self.lists[name]
        K = tokens.shape[-1]
        if table.shape[-1] < K:  # grow every slot's list, padding with V
            wider = torch.full((*table.shape[:2], K), self.V, dtype=torch.long, device=self.device)
            wider[..., : table.shape[-1]] = table
            self.lists[name] = table = wider
        table[slot] = self.V
        table[slot, :, :K] = tokens

    # ---- the step: gather a tile, store its results -------------------------------------------------------

    def gather(self, index: torch.Tensor, slots: list[int]) -> TileState:
        """The state of the rows in `slots` (the same slots as the device tensor `index`, (B,))."""
        params = TileParams(**{name: getattr(self.params, name)[index] for name in TileParams.__dataclass_fields__})
        kinds = frozenset().union(*(self.kinds[s] for s in slots))
        constraint = None
        if kinds:
            lists = {name: self.lists[name][index] if name in kinds else None for name in _LISTS}
            constraint = TileConstraint(
                pinned=self.pinned[index],
                pinned_token=self.pinned_token[index],
                constrained=self.constrained[index] if "allowed" in kinds else None,
                peers=self.peers[index] if "peers" in kinds and self.peers is not None else None,
                **lists,
            )
        return TileState(
            canvas=self.canvas[index],
            argmax=self.argmax[index],
            held=self.held[index],
            step=self.step[index],
            run=self.run[index],
            params=params,
            constraint=constraint,
            any_left_to_right=any(self.left_to_right[s] for s in slots),
        )

    def store(self, index: torch.Tensor, out: TileOutput, soft: torch.Tensor) -> None:
        """Write a step's results for the rows at `index` (B,); soft (B, C, H)."""
        for name in ("canvas", "argmax", "held", "step", "run"):
            getattr(self, name).index_copy_(0, index, getattr(out, name))
        self.soft.index_copy_(0, index, soft)
