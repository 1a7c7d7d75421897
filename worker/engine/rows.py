"""The state of one running request (a row of the batch) and what a finished request returns."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from worker.engine.logprobs import StepLogprobs
from worker.engine.params import Request

# One committed token's log-probability: (token, log p, [(alternative, log p), ...])
TokenLogprob = tuple[int, float, list[tuple[int, float]]]

EventCallback = Callable[[str, str, dict[str, Any]], None]  # (request_id, kind, data)


class Phase(Enum):
    PREFILL = "prefill"  # prompt chunks still to encode
    DENOISE = "denoise"  # refining the current canvas
    COMMIT = "commit"  # the converged canvas must be encoded before the next one starts


@dataclass
class EngineResult:
    request_id: str
    token_ids: list[int]
    finish_reason: str  # eos | length | stop | canceled
    denoising_steps: int
    canvases: int
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None  # one per token of token_ids when the request asked

    @property
    def tokens_per_forward(self) -> float:
        return round(len(self.token_ids) / self.denoising_steps, 4) if self.denoising_steps else 0.0


class RequestHandle:
    """What `Engine.submit` returns: wait on it for the result, from any thread."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._done = threading.Event()
        self.result: EngineResult | None = None
        self.error: BaseException | None = None

    def finish(self, result: EngineResult | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait_done(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; whether the request has finished."""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> EngineResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} not finished after {timeout}s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass
class Row:
    """A request inside the engine: host-side bookkeeping. Its tensors (canvas, argmax, self-conditioning,
    stop state, constraints) live in the engine's `Slots`, its K/V in the engine's `SlotKV`, at index `slot`."""

    request: Request
    handle: RequestHandle
    cost: int
    generator: torch.Generator
    on_event: EventCallback | None
    slot: int = -1  # set at admission
    phase: Phase = Phase.PREFILL
    prompt_done: int = 0  # prompt tokens already encoded
    encoded: int = 0  # tokens in the cache (prompt and committed canvases): the next position
    generated: list[int] = field(default_factory=list)  # committed output tokens
    step: int = 0  # steps taken on the current canvas
    steps_total: int = 0
    canvases: int = 0
    last_draft_at: float = 0.0
    step_logprobs: StepLogprobs | None = None  # the latest step's, on the device (requests with logprobs)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the committed tokens
    cancel_requested: bool = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(self.request_id, kind, data)
