"""The batched block-denoising engine: schedule -> execute -> update, one tick at a time.

Requests join as soon as their prompt is encoded and leave the moment they finish; a converged canvas
commits at once instead of waiting for the other rows. `submit` and `cancel` are thread-safe; the loop
runs in one thread (`start`) or in the caller (`run_until_idle`). Ids in, ids out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from worker.engine.output import find_end
from worker.engine.params import Request
from worker.engine.rows import EngineResult, EventCallback, Phase, RequestHandle, Row
from worker.engine.runner import ModelRunner
from worker.engine.sampler import CanvasConstraint, denoise_step
from worker.engine.scheduler import MemoryModel, Scheduler

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self, model: Any, *, max_rows: int = 16, memory_budget_bytes: int | None = None, prefill_chunk: int = 512
    ) -> None:
        self.runner = ModelRunner(model)
        self.memory = memory_model(self.runner)
        self.scheduler: Scheduler[Row] = Scheduler(max_rows, memory_budget_bytes)
        self.prefill_chunk = prefill_chunk
        self.rows: list[Row] = []
        self._lock = threading.Condition()
        self._cancels: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._calls: list[tuple[Callable[[], Any], RequestHandle]] = []
        self.stats = {"ticks": 0, "decoder_passes": 0, "rows_in_decoder": 0}

    # ---- the thread-safe surface -------------------------------------------------------------------

    def submit(self, request: Request, on_event: EventCallback | None = None) -> RequestHandle:
        request.validate(self.runner.vocab_size)
        handle = RequestHandle(request.request_id)
        generator = torch.Generator(device=self.runner.device).manual_seed(request.params.seed)
        cost = self.memory.row_bytes(len(request.prompt_ids), request.params.max_new_tokens)
        row = Row(request, handle, cost, self.runner.new_cache(), generator, on_event)
        with self._lock:
            self.scheduler.add(row, cost)
            self._lock.notify()
        return handle

    def call_between_steps(self, fn: Callable[[], Any]) -> RequestHandle:
        """Run `fn` in the engine's loop between two ticks (e.g. loading an adapter, which changes modules).
        Wait on the returned handle; its result is fn's return value."""
        handle = RequestHandle("call")
        with self._lock:
            self._calls.append((fn, handle))
            self._lock.notify()
        if self._thread is None or not self._thread.is_alive():
            self._run_calls()  # no loop thread: the caller drives the engine, so run it now
        return handle

    def add_adapter(self, name: str, load: Callable[[Any], Any]) -> None:
        """Load a LoRA adapter next to the base weights: `load(model)` returns the PeftModel."""

        def install() -> bool:
            self.runner.adapters = load(self.runner.adapters or self.runner.model)
            self.runner.active_adapter = "?"  # unknown after loading: the next use sets it
            return True

        self.call_between_steps(install).wait()

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancels.add(request_id)
            self._lock.notify()

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="canvas-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    @property
    def load(self) -> dict[str, int]:
        return {"running": len(self.rows), "waiting": len(self.scheduler.waiting)}

    def run_until_idle(self) -> None:
        while self.step():
            pass

    def _loop(self) -> None:
        self.serve(lambda: False)

    def serve(self, until: Callable[[], bool]) -> None:
        """Step while there is work, sleep while there is none, return once `stop()` was called or
        `until()` is true between ticks. `start()` runs this in a thread; a caller may run it itself."""
        while not until():
            with self._lock:
                while (
                    not self._stopping
                    and not self.rows
                    and not self.scheduler.waiting
                    and not self._cancels
                    and not self._calls
                ):
                    if until():
                        return
                    self._lock.wait(0.05)
                if self._stopping:
                    return
            self.step()

    # ---- one tick ----------------------------------------------------------------------------------

    def step(self) -> bool:
        """schedule -> execute -> update. Returns whether any request is still waiting or running."""
        self._run_calls()
        self._apply_cancels()
        with self._lock:
            self.rows += self.scheduler.admit()
        if not self.rows:
            return bool(self.scheduler.waiting)
        self.stats["ticks"] += 1
        try:
            self._encode()
            self._denoise()
        except Exception as exc:  # a failing batch fails its rows, never the engine
            log.exception("engine tick failed")
            for row in list(self.rows):
                self._finish(row, error=exc)
        return bool(self.rows or self.scheduler.waiting)

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for fn, handle in calls:
            try:
                handle.finish(fn())  # type: ignore[arg-type]
            except Exception as exc:  # the caller sees the error; the engine goes on
                handle.finish(error=exc)

    def _apply_cancels(self) -> None:
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            canceled_waiting = self.scheduler.remove_waiting(lambda r: r.request_id in cancels)
        for row in canceled_waiting:
            row.handle.finish(self._result(row, "canceled"))
        for row in list(self.rows):
            if row.request_id in cancels:
                self._finish(row, "canceled")

    def _encode(self) -> None:
        """Commits of converged canvases, then at most `prefill_chunk` prompt tokens (oldest first), so a
        long new prompt never stalls the running rows for more than about one step."""
        for row in [r for r in self.rows if r.phase is Phase.COMMIT]:
            self.runner.use_adapter(row.request.adapter)
            self.runner.encode(row.cache, row.argmax, row.encoded)
            row.encoded += self.runner.canvas_length
            self._start_canvas(row)
        budget = self.prefill_chunk
        for row in [r for r in self.rows if r.phase is Phase.PREFILL]:
            if budget <= 0:
                break
            prompt = row.request.prompt_ids
            take = min(budget, len(prompt) - row.prompt_done)
            ids = torch.tensor([prompt[row.prompt_done : row.prompt_done + take]], device=self.runner.device)
            self.runner.use_adapter(row.request.adapter)
            self.runner.encode(row.cache, ids, row.prompt_done)
            row.prompt_done += take
            row.encoded += take
            budget -= take
            if row.prompt_done == len(prompt):
                self._start_canvas(row)

    def _start_canvas(self, row: Row) -> None:
        """A fresh uniform-random canvas (drawn from the row's generator, as generate() draws it)."""
        C, V, device = self.runner.canvas_length, self.runner.vocab_size, self.runner.device
        row.canvas = torch.randint(0, V, (1, C), device=device, generator=row.generator)
        row.constraint = canvas_constraint(row.request, row.canvases, C, device, row.generated)
        if row.constraint is not None and row.constraint.pinned_index.numel():
            row.canvas[0, row.constraint.pinned_index] = row.constraint.pinned_token
        row.soft = self.runner.zero_soft()
        S = row.request.params.stability_threshold
        row.history = torch.full((S, 1, C), -1, dtype=torch.long, device=device)
        row.held = None
        row.step = 0
        row.phase = Phase.DENOISE

    def _denoise(self) -> None:
        """One decoder pass per adapter among the denoising rows (the base weights are read by each)."""
        groups: dict[str | None, list[Row]] = {}
        for row in self.rows:
            if row.phase is Phase.DENOISE:
                groups.setdefault(row.request.adapter, []).append(row)
        for adapter, rows in groups.items():
            self.runner.use_adapter(adapter)
            self._denoise_rows(rows)

    def _denoise_rows(self, rows: list[Row]) -> None:
        C, device = self.runner.canvas_length, self.runner.device
        kv, masks = self.runner.gather([r.cache for r in rows])
        canvas = torch.cat([r.canvas for r in rows])  # (B, C)
        soft = torch.cat([r.soft for r in rows])  # (B, C, H)
        offsets = torch.arange(C, dtype=torch.int32, device=device)
        positions = torch.stack([offsets + r.encoded for r in rows])  # (B, C)
        hidden = self.runner.decode(canvas, soft, kv, masks, positions)  # (B, C, H)
        del kv, masks, soft
        self.stats["decoder_passes"] += 1
        self.stats["rows_in_decoder"] += len(rows)
        for i, row in enumerate(rows):
            self._sample_row(row, hidden[i : i + 1])

    def _sample_row(self, row: Row, hidden: torch.Tensor) -> None:
        params = row.request.params
        logits = self.runner.logits(hidden)  # (1, C, V): one row of full-vocabulary fp32 at a time
        remaining = params.max_denoising_steps - row.step
        out, row.history = denoise_step(
            logits, row.canvas, remaining, params, row.generator, row.constraint, row.history, row.held
        )
        del logits
        row.step += 1
        row.steps_total += 1
        row.argmax = out.argmax
        self._maybe_draft(row)
        if out.converged or row.step >= params.max_denoising_steps:
            self._commit(row)
        else:
            row.canvas, row.held = out.canvas, out.accepted
            row.soft = self.runner.soft_embeddings(out.processed)

    def _maybe_draft(self, row: Row) -> None:
        interval = row.request.draft_interval
        if interval is None or row.on_event is None:
            return
        now = time.monotonic()
        if now - row.last_draft_at >= interval:
            row.last_draft_at = now
            row.emit("draft", {"canvas": row.canvases, "step": row.step, "token_ids": row.argmax[0].tolist()})

    def _commit(self, row: Row) -> None:
        """The argmax canvas is the committed text; the output may end inside it."""
        new = row.argmax[0].tolist()
        first_new = len(row.generated)
        row.generated += new
        row.canvases += 1
        end = find_end(row.request, row.generated, first_new)
        kept = row.generated[first_new : end[0]] if end else new
        row.emit("canvas", {"canvas": row.canvases - 1, "token_ids": kept, "steps": row.step, "final": end is not None})
        if end is not None:
            row.generated = row.generated[: end[0]]
            self._finish(row, end[1])
        else:
            row.phase = Phase.COMMIT

    # ---- update --------------------------------------------------------------------------------------

    def _result(self, row: Row, reason: str) -> EngineResult:
        return EngineResult(
            row.request_id, list(row.generated), reason, row.steps_total, row.canvases, len(row.request.prompt_ids)
        )

    def _finish(self, row: Row, reason: str = "error", error: BaseException | None = None) -> None:
        if row in self.rows:
            self.rows.remove(row)
            with self._lock:
                self.scheduler.release(row.cost)
        row.cache = None  # type: ignore[assignment]  # free the KV at once
        row.soft = row.canvas = row.history = row.held = None
        if error is not None:
            row.handle.finish(error=error)
            return
        result = self._result(row, reason)
        row.emit("finished", {"finish_reason": reason, "token_ids": result.token_ids})
        row.handle.finish(result)


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


def memory_model(runner: ModelRunner) -> MemoryModel:
    """Per-row bytes from the config: K and V of every full layer per token, sliding layers capped."""
    text, itemsize = runner.text_config, runner.dtype.itemsize
    per_full = per_sliding = 0
    for index, layer_type in enumerate(runner.layer_types):
        layer = text.per_layer_config[index] if hasattr(text, "per_layer_config") else text
        kv = 2 * layer.num_key_value_heads * layer.head_dim * itemsize
        if layer_type == "sliding_attention":
            per_sliding += kv
        else:
            per_full += kv
    C, H = runner.canvas_length, runner.hidden_size
    window = getattr(text, "sliding_window", 0) or 0
    row_state = C * H * itemsize + 4 * C * 8
    return MemoryModel(per_full, per_sliding * window, C, row_state)
