"""Per-request parameters of the engine, validated. Plain data: no torch, no service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class InvalidParams(ValueError):
    """A request the engine cannot run, with the field that is wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class SamplingParams:
    """Denoising parameters of one request (defaults: the released model's, reference digest 2.1)."""

    max_new_tokens: int = 256
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int = 1
    confidence_threshold: float = 0.005
    seed: int = 0
    order: str = "entropy"  # "entropy": lowest-entropy positions first; "left_to_right": one per step, leftmost
    sampler: str = "exact"  # "exact": generate()'s kernels and random stream; "fast": fast_sampler.py

    def validate(self) -> SamplingParams:
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "must be at least 1"),
            ("max_denoising_steps", self.max_denoising_steps >= 1, "must be at least 1"),
            ("entropy_bound", self.entropy_bound > 0, "must be positive"),
            ("t_min", self.t_min > 0, "must be positive"),
            ("t_max", self.t_max > self.t_min, "must be greater than t_min"),
            ("stability_threshold", self.stability_threshold >= 0, "must be at least 0"),
            ("confidence_threshold", self.confidence_threshold > 0, "must be positive"),
            ("order", self.order in ("entropy", "left_to_right"), "must be 'entropy' or 'left_to_right'"),
            ("sampler", self.sampler in ("exact", "fast"), "must be 'exact' or 'fast'"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise InvalidParams(name, message)
        return self


@dataclass(frozen=True)
class Request:
    """One generation request: ids in, ids out (tokenization happens outside the engine).

    `pinned` maps an output offset (0 = first generated token) to the token that must stand there;
    `allowed` maps an output offset to the only tokens it may take (for example the digits);
    each `distinct` group lists output offsets whose tokens must all differ (a Sudoku's rows, columns and
    boxes): a free position may not take a token that a pinned peer, or a peer the last step kept, holds.
    """

    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    eos_ids: frozenset[int] = frozenset()
    pinned: dict[int, int] = field(default_factory=dict)
    allowed: dict[int, tuple[int, ...]] = field(default_factory=dict)
    distinct: tuple[tuple[int, ...], ...] = ()
    # Stop strings the tokenizer may split: output ids so far -> how many to keep (through the token in
    # which the first stop string ends), or None. The caller cuts the text; the engine only stops early.
    stop_within: Callable[[Sequence[int]], int | None] | None = None
    draft_interval: float | None = None  # seconds between draft events; None: no drafts
    adapter: str | None = None  # a LoRA adapter loaded next to the base weights (Engine.add_adapter)
    # Report each committed token's log-probability and this many alternatives (worker/engine/logprobs.py);
    # None: none.
    logprobs: int | None = None

    def validate(self, vocab_size: int) -> Request:
        if not self.prompt_ids:
            raise InvalidParams("prompt_ids", "must not be empty")
        self.params.validate()
        bad = [t for t in (*self.prompt_ids, *self.pinned.values()) if not 0 <= t < vocab_size]
        if bad:
            raise InvalidParams("prompt_ids", f"token {bad[0]} is outside the vocabulary")
        for offset, tokens in self.allowed.items():
            if not tokens or not all(0 <= t < vocab_size for t in tokens):
                raise InvalidParams("allowed", f"offset {offset} needs tokens inside the vocabulary")
        for offset, token in self.pinned.items():
            if offset in self.allowed and token not in self.allowed[offset]:
                raise InvalidParams("pinned", f"offset {offset} pins a token its constraint forbids")
        if self.logprobs is not None and self.logprobs < 0:
            raise InvalidParams("logprobs", "must be at least 0")
        if self.logprobs is not None and self.params.sampler == "fast":
            raise InvalidParams("logprobs", "needs the exact sampler (the fast one holds no step's distribution)")
        for group in self.distinct:
            if len(set(group)) != len(group) or min(group, default=0) < 0:
                raise InvalidParams("distinct", "a group lists distinct offsets, none negative")
        return self
