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
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from worker.engine.constraints import canvas_constraint
from worker.engine.fast_sampler import fast_tile, noise_key
from worker.engine.output import find_end
from worker.engine.params import Request
from worker.engine.rows import EngineResult, EventCallback, Phase, RequestHandle, Row
from worker.engine.runner import ModelRunner, to_device
from worker.engine.sampler import (
    CONVERGED,
    NONFINITE,
    TileDraws,
    TileOutput,
    denoise_tile,
    draw_noise,
    draw_rows,
    empty_draws,
)
from worker.engine.scheduler import MemoryModel, Scheduler
from worker.engine.slots import Slots

log = logging.getLogger(__name__)


class NonFiniteLogits(RuntimeError):
    """The model produced NaN logits for a row (its weights, adapter or input are broken)."""


class Engine:
    def __init__(
        self,
        model: Any,
        *,
        max_rows: int = 16,
        memory_budget_bytes: int | None = None,
        prefill_chunk: int = 512,
        sampler_bytes: int | None = None,
    ) -> None:
        self.runner = ModelRunner(model)
        self.memory = memory_model(self.runner)
        self.scheduler: Scheduler[Row] = Scheduler(max_rows, memory_budget_bytes)
        r = self.runner
        self.slots = Slots(max_rows, r.canvas_length, r.hidden_size, r.vocab_size, r.dtype, r.device)
        self.tile_rows = sampler_tile_rows(r, sampler_bytes)
        self._draw_threads = torch.get_num_threads() if r.device.type == "cpu" else 0
        self._draw_pool = ThreadPoolExecutor(self._draw_threads, "canvas-draws") if self._draw_threads else None
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
            admitted = self.scheduler.admit()
        for row in admitted:
            row.slot = self.slots.acquire(row.request.params)
            self.rows.append(row)
        if not self.rows:
            return bool(self.scheduler.waiting)
        self.stats["ticks"] += 1
        try:
            with torch.inference_mode():
                self._encode()
                self._denoise()
        except Exception as exc:  # a bug of the engine's own: fail the rows, keep the loop alive
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

    def _guarded(self, row: Row, fn: Callable[[Row], None]) -> None:
        """fn(row); an exception (its callback, its stop test, its adapter, its own pass running out of
        memory) fails this row only."""
        try:
            fn(row)
        except Exception as exc:
            log.warning("request %s failed: %r", row.request_id, exc)
            self._finish(row, error=exc)

    # ---- execute: encoder passes ---------------------------------------------------------------------

    def _encode(self) -> None:
        """Commits of converged canvases, then at most `prefill_chunk` prompt tokens (oldest first), so a
        long new prompt never stalls the running rows for more than about one step."""
        for row in [r for r in self.rows if r.phase is Phase.COMMIT]:
            self._guarded(row, self._encode_commit)
        budget = self.prefill_chunk
        for row in [r for r in self.rows if r.phase is Phase.PREFILL]:
            if budget <= 0:
                break
            take = min(budget, len(row.request.prompt_ids) - row.prompt_done)
            budget -= take
            self._guarded(row, lambda r, n=take: self._encode_prompt(r, n))

    def _encode_commit(self, row: Row) -> None:
        self.runner.use_adapter(row.request.adapter)
        self.runner.encode(row.cache, self.slots.argmax[row.slot : row.slot + 1], row.encoded)
        row.encoded += self.runner.canvas_length
        self._start_canvas(row)

    def _encode_prompt(self, row: Row, take: int) -> None:
        prompt = row.request.prompt_ids
        ids = torch.tensor([prompt[row.prompt_done : row.prompt_done + take]], device=self.runner.device)
        self.runner.use_adapter(row.request.adapter)
        self.runner.encode(row.cache, ids, row.prompt_done)
        row.prompt_done += take
        row.encoded += take
        if row.prompt_done == len(prompt):
            self._start_canvas(row)

    def _start_canvas(self, row: Row) -> None:
        """A fresh uniform-random canvas (drawn from the row's generator, as generate() draws it)."""
        C, V, device = self.runner.canvas_length, self.runner.vocab_size, self.runner.device
        canvas = torch.randint(0, V, (1, C), device=device, generator=row.generator)[0]
        constraint = canvas_constraint(row.request, row.canvases, C, V, device, row.generated)
        self.slots.start_canvas(row.slot, canvas, constraint)
        row.step = 0
        row.phase = Phase.DENOISE

    # ---- execute: decoder passes and the sampler --------------------------------------------------------

    def _denoise(self) -> None:
        """One decoder pass per adapter among the denoising rows, the sampler over tiles of rows, then the
        step's one read on the host: each row's flags and argmax canvas, in one tensor."""
        groups: dict[str | None, list[Row]] = {}
        for row in self.rows:
            if row.phase is Phase.DENOISE:
                groups.setdefault(row.request.adapter, []).append(row)
        stepped: list[tuple[list[Row], torch.Tensor]] = []
        for adapter, rows in groups.items():
            stepped += self._denoise_group(adapter, rows)
        if not stepped:
            return
        report = torch.cat([r for _, r in stepped]).cpu()  # (rows, 1 + C): flags, then the argmax canvas
        flags = report[:, 0].tolist()
        for i, row in enumerate(row for rows, _ in stepped for row in rows):
            self._guarded(row, lambda r, i=i: self._update(r, flags[i], report[i, 1:]))

    def _denoise_group(self, adapter: str | None, rows: list[Row]) -> list[tuple[list[Row], torch.Tensor]]:
        try:
            self.runner.use_adapter(adapter)
        except Exception as exc:  # a missing adapter fails the rows that asked for it
            for row in rows:
                self._finish(row, error=exc)
            return []
        return self._denoise_rows(sorted(rows, key=is_fast))  # exact rows first: tiles of one mode each

    def _denoise_rows(self, rows: list[Row]) -> list[tuple[list[Row], torch.Tensor]]:
        """One step of `rows`. Out of memory, they retry in halves (random streams rewound, so a retried
        row's output is what it would have been); a row that runs out of memory alone fails alone. Any
        other error in a batched pass cannot be told apart by row: it fails this pass's rows only."""
        states = [row.generator.get_state() for row in rows]
        try:
            return [(rows, self._pass(rows))]
        except torch.OutOfMemoryError as exc:
            for row, state in zip(rows, states, strict=True):
                row.generator.set_state(state)
            if len(rows) == 1:
                self._finish(rows[0], error=exc)
                return []
            log.warning("out of memory in a pass of %d rows: retrying in halves", len(rows))
            half = len(rows) // 2
            return self._denoise_rows(rows[:half]) + self._denoise_rows(rows[half:])
        except Exception as exc:
            log.exception("decoder pass of %d rows failed", len(rows))
            for row in rows:
                self._finish(row, error=exc)
            return []

    def _pass(self, rows: list[Row]) -> torch.Tensor:
        """Decoder pass, then the sampler tile by tile; the rows' slots change only once every tile has
        run, so a failure leaves them as they were. Returns (B, 1 + C): flags and argmax canvases."""
        C, V, device = self.runner.canvas_length, self.runner.vocab_size, self.runner.device
        tiles = mode_tiles(rows, self.tile_rows)
        drawn, pending = self._draw_ahead(rows, tiles)
        try:
            slots = [row.slot for row in rows]
            index = to_device(slots, device)  # (B,)
            kv, masks = self.runner.gather([row.cache for row in rows])
            offsets = torch.arange(C, dtype=torch.int32, device=device)
            positions = to_device([row.encoded for row in rows], device, torch.int32)[:, None] + offsets  # (B, C)
            hidden = self.runner.decode(self.slots.canvas[index], self.slots.soft[index], kv, masks, positions)
            del kv, masks
            self.stats["decoder_passes"] += 1
            self.stats["rows_in_decoder"] += len(rows)
            results = []
            for i, tile in enumerate(tiles):
                if is_fast(rows[tile.start]):
                    results.append(self._sample_fast(hidden[tile], index[tile], slots[tile], rows[tile]))
                    continue
                wait(pending[i])
                for future in pending[i]:
                    future.result()  # a draw's error, if any, is this pass's
                draws = drawn[i] or draw_noise([row.generator for row in rows[tile]], C, V, device)
                drawn[i] = None
                results.append(self._sample(hidden[tile], index[tile], slots[tile], draws))
                del draws
        finally:  # no draw may still run when a failed pass rewinds the generators
            wait([future for futures in pending for future in futures])
        for (out, soft), tile in zip(results, tiles, strict=True):
            self.slots.store(index[tile], out, soft)
        return torch.cat([torch.cat([out.flags[:, None].long(), out.argmax], dim=1) for out, _ in results])

    def _draw_ahead(self, rows: list[Row], tiles: list[slice]) -> tuple[list[TileDraws | None], list[list[Future]]]:
        """On the CPU a generator draws serially, on one core: there every tile's draws start now, in
        threads, row ranges side by side, while the decoder runs. On a GPU nothing is drawn ahead (each
        tile draws just before its step, so only one tile's draws exist at a time)."""
        if self._draw_pool is None:
            return [None] * len(tiles), [[] for _ in tiles]
        C, V, device = self.runner.canvas_length, self.runner.vocab_size, self.runner.device
        drawn: list[TileDraws | None] = []
        pending: list[list[Future]] = []
        try:
            for tile in tiles:
                if is_fast(rows[tile.start]):  # counter-based noise: nothing to draw
                    drawn.append(None)
                    pending.append([])
                    continue
                generators = [row.generator for row in rows[tile]]
                draws = empty_draws(len(generators), C, V, device)
                drawn.append(draws)
                chunks = [range(i, len(generators), self._draw_threads) for i in range(self._draw_threads)]
                pending.append([self._draw_pool.submit(draw_rows, draws, generators, c) for c in chunks if c])
        except BaseException:  # e.g. out of memory for a later tile: no draw may outlive the pass
            wait([future for futures in pending for future in futures])
            raise
        return drawn, pending

    def _sample(
        self, hidden: torch.Tensor, index: torch.Tensor, slots: list[int], draws: TileDraws
    ) -> tuple[TileOutput, torch.Tensor]:
        """The sampler step of one tile; full-vocabulary tensors live only inside it. hidden (B, C, H)."""
        state = self.slots.gather(index, slots)
        logits = self.runner.logits(hidden)  # (B, C, V)
        out, probs = denoise_tile(logits, state, draws)
        return out, self.runner.soft_embeddings(logits, probs)  # logits now hold the processed logits

    def _sample_fast(
        self, hidden: torch.Tensor, index: torch.Tensor, slots: list[int], rows: list[Row]
    ) -> tuple[TileOutput, torch.Tensor]:
        """The fast sampler's step of one tile (fast_sampler.py): from the lm_head's logits as they are."""
        state = self.slots.gather(index, slots)
        keys = to_device([noise_key(row.request.params.seed, row.canvases) for row in rows], self.runner.device)
        embed = self.runner.decoder.embed_tokens
        return fast_tile(self.runner.head(hidden), state, keys, self.runner.softcap, embed.weight, embed.embed_scale)

    # ---- update ----------------------------------------------------------------------------------------

    def _update(self, row: Row, flags: int, argmax: torch.Tensor) -> None:
        """After a step: the row's draft, and its commit once converged or out of steps. argmax (C,) on the host."""
        row.step += 1
        row.steps_total += 1
        if flags & NONFINITE:
            raise NonFiniteLogits(f"NaN logits at step {row.step} of canvas {row.canvases}")
        self._maybe_draft(row, argmax)
        if flags & CONVERGED or row.step >= row.request.params.max_denoising_steps:
            self._commit(row, argmax.tolist())

    def _maybe_draft(self, row: Row, argmax: torch.Tensor) -> None:
        interval = row.request.draft_interval
        if interval is None or row.on_event is None:
            return
        now = time.monotonic()
        if now - row.last_draft_at >= interval:
            row.last_draft_at = now
            row.emit("draft", {"canvas": row.canvases, "step": row.step, "token_ids": argmax.tolist()})

    def _commit(self, row: Row, new: list[int]) -> None:
        """The argmax canvas is the committed text; the output may end inside it."""
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

    def _result(self, row: Row, reason: str) -> EngineResult:
        return EngineResult(
            row.request_id, list(row.generated), reason, row.steps_total, row.canvases, len(row.request.prompt_ids)
        )

    def _finish(self, row: Row, reason: str = "error", error: BaseException | None = None) -> None:
        if row in self.rows:
            self.rows.remove(row)
            self.slots.release(row.slot)
            with self._lock:
                self.scheduler.release(row.cost)
        row.cache = None  # type: ignore[assignment]  # free the KV at once
        if error is None:
            result = self._result(row, reason)
            try:
                row.emit("finished", {"finish_reason": reason, "token_ids": result.token_ids})
            except Exception as exc:  # the handle still finishes: with the callback's error
                log.warning("request %s: its finished callback failed: %r", row.request_id, exc)
                error = exc
            else:
                row.handle.finish(result)
                return
        row.handle.finish(error=error)


def is_fast(row: Row) -> bool:
    return row.request.params.sampler == "fast"


def mode_tiles(rows: list[Row], tile_rows: int) -> list[slice]:
    """Tiles of at most `tile_rows` rows, each of one sampler mode (`rows` hold the exact ones first)."""
    split = sum(not is_fast(row) for row in rows)
    return [
        slice(lo, min(lo + tile_rows, end))
        for start, end in ((0, split), (split, len(rows)))
        for lo in range(start, end, tile_rows)
    ]


def sampler_tile_rows(runner: ModelRunner, budget_bytes: int | None) -> int:
    """Rows per sampler tile. A step holds about four (C, V) float32 tensors per row (logits, softmax,
    exponential draws, the entropy's softmax); a tile gets `budget_bytes` of them: by default half the
    GPU memory free after the weights, or 256 MiB on the CPU."""
    per_row = 4 * runner.canvas_length * runner.vocab_size * 4
    if budget_bytes is None and runner.device.type == "cuda":
        budget_bytes = torch.cuda.mem_get_info(runner.device)[0] // 2
    return max(1, (budget_bytes or 256 * 2**20) // per_row)


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
