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
from concurrent.futures import Future, wait
from typing import Any

import torch

from worker.engine.constraints import canvas_constraint
from worker.engine.cpu_pool import single_threaded_pool, split_evenly
from worker.engine.fast_sampler import fast_tile, noise_key
from worker.engine.graphs import decoder_graphs
from worker.engine.kv import SlotKV, layer_shapes, slot_bytes, to_device
from worker.engine.logprobs import StepLogprobs, committed_entries, step_logprobs
from worker.engine.output import find_end
from worker.engine.params import InvalidParams, Request
from worker.engine.rows import EngineResult, EventCallback, Phase, RequestHandle, Row
from worker.engine.runner import IDLE, ModelRunner
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
from worker.engine.scheduler import Scheduler
from worker.engine.slots import Slots

log = logging.getLogger(__name__)

CPU_MEMORY_BUDGET = 2 * 2**30  # bytes of KV slots on the CPU unless `memory_budget_bytes` says otherwise
# A CPU sampler tile's full-vocabulary tensors stay in a last-level cache: about 20 passes go over each,
# and 16 rows of the small benchmark model in one tile (64 MiB) took 60 ms a step against 46 in tiles of 4.
CPU_SAMPLER_BYTES = 16 * 2**20
DEFAULT_MAX_CONTEXT = 8192  # prompt plus output tokens per row, unless `max_context` says otherwise


class KVAdvanceFailed(RuntimeError):
    """An encoder pass succeeded but making its tokens part of the rows' prefixes did not (for example out
    of memory while shifting a sliding window): the rows' K/V are in an unknown state, so they fail rather
    than retry."""


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
        max_context: int | None = None,
        graphs: str = "auto",
    ) -> None:
        """`max_rows` rows at most, fewer if their K/V slots do not fit `memory_budget_bytes` (default: half
        the GPU memory free after the weights; on the CPU `CPU_MEMORY_BUDGET`). A row holds up to
        `max_context` tokens of prompt and output (default: the model's positions, at most
        `DEFAULT_MAX_CONTEXT`); longer requests are refused at `submit`. `graphs` (graphs.py): "auto"
        captures the decoder passes in CUDA graphs on a GPU where the model's MoE can be captured
        (`capture_blocker`; none on the CPU), "off" keeps every pass eager, "uncaptured" runs the
        bucketed passes eagerly (the CPU stand-in for graphs)."""
        self.runner = r = ModelRunner(model)
        self.max_context = max_context or min(r.text_config.max_position_embeddings, DEFAULT_MAX_CONTEXT)
        self.prefill_chunk = prefill_chunk
        shapes = layer_shapes(
            r.text_config, r.layer_types, r.window, self.max_context, max(r.canvas_length, prefill_chunk)
        )
        self.slot_bytes = slot_bytes(shapes, r.dtype.itemsize) + row_state_bytes(r)
        rows = max(1, min(max_rows, kv_budget(r, memory_budget_bytes) // self.slot_bytes))
        self.kv = SlotKV(shapes, rows, r.window, r.dtype, r.device)
        self.scheduler: Scheduler[Row] = Scheduler(rows, None)  # a slot per row: its bytes are preallocated
        self.slots = Slots(rows, r.canvas_length, r.hidden_size, r.vocab_size, r.dtype, r.device)
        self.graphs = decoder_graphs(graphs, r, self.kv, self.slots, self.max_context)
        self.tile_rows = sampler_tile_rows(r, sampler_bytes)  # after the graphs: their pool is taken
        self._cpu_threads = torch.get_num_threads() if r.device.type == "cpu" else 0
        self._cpu_pool = single_threaded_pool(self._cpu_threads) if self._cpu_threads > 1 else None
        self.rows: list[Row] = []
        self._lock = threading.Condition()
        self._cancels: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._calls: list[tuple[Callable[[], Any], RequestHandle]] = []
        self.stats = {"ticks": 0, "decoder_passes": 0, "graph_passes": 0, "rows_in_decoder": 0, "encoder_passes": 0}

    # ---- the thread-safe surface -------------------------------------------------------------------

    def submit(self, request: Request, on_event: EventCallback | None = None) -> RequestHandle:
        request.validate(self.runner.vocab_size)
        C = self.runner.canvas_length
        context = len(request.prompt_ids) + -(-request.params.max_new_tokens // C) * C
        if context > self.max_context:
            raise InvalidParams(
                "max_new_tokens",
                f"the prompt ({len(request.prompt_ids)} tokens) and the output, in canvases of {C}, need {context} "
                f"tokens: more than this engine's context of {self.max_context}",
            )
        handle = RequestHandle(request.request_id)
        generator = torch.Generator(device=self.runner.device).manual_seed(request.params.seed)
        row = Row(request, handle, self.slot_bytes, generator, on_event)
        with self._lock:
            self.scheduler.add(row, row.cost)
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
            self._check_graphs()
            return True

        self.call_between_steps(install).wait()

    def remove_adapter(self, unload: Callable[[Any], Any]) -> None:
        """Unload a LoRA adapter: `unload(peft_model)` returns the PeftModel, or the bare base model once
        no adapter is left. The caller makes sure no row uses it."""

        def uninstall() -> bool:
            remaining = unload(self.runner.adapters)
            self.runner.adapters = None if remaining is self.runner.model else remaining
            self.runner.active_adapter = "?" if self.runner.adapters is not None else None
            self._check_graphs()
            return True

        self.call_between_steps(uninstall).wait()

    def _check_graphs(self) -> None:
        """Captured graphs read the weights where they were: if loading or unloading an adapter moved any
        (a merge), drop the graphs and run every pass eagerly."""
        if self.graphs is not None and not self.graphs.weights_unchanged():
            log.warning("the decoder's weights moved: its CUDA graphs are dropped, passes run eagerly")
            self.graphs = None

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
        pool, self._cpu_pool = self._cpu_pool, None  # later steps (if any) run as one pass, in the caller
        if pool is not None:
            pool.shutdown(wait=True)

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
        long new prompt never stalls the running rows for more than about one step: all of them in one
        encoder pass, whatever their adapters."""
        work: list[tuple[Row, int]] = [(r, self.runner.canvas_length) for r in self.rows if r.phase is Phase.COMMIT]
        budget = self.prefill_chunk
        for row in [r for r in self.rows if r.phase is Phase.PREFILL]:
            if budget <= 0:
                break
            take = min(budget, len(row.request.prompt_ids) - row.prompt_done)
            budget -= take
            work.append((row, take))
        work = [(row, take) for row, take in work if self._adapter_loaded(row)]
        if work:
            self._encode_rows(work)

    def _adapter_loaded(self, row: Row) -> bool:
        """Whether the row's adapter is loaded; a row whose adapter is missing fails (it alone)."""
        try:
            self.runner.check_adapter(row.request.adapter)
        except KeyError as exc:
            self._finish(row, error=exc)
            return False
        return True

    def _encode_rows(self, items: list[tuple[Row, int]]) -> None:
        """One encoder pass over `items` (row, new tokens); out of memory, they retry in halves and a row
        that runs out alone fails alone (a failed pass leaves every row's K/V as it was). On a CPU with
        several cores the pass runs as groups side by side (`_encode_groups`)."""
        groups = self._encoder_groups(items)
        if groups is not None:
            self._encode_groups(groups)
            return
        try:
            if self._cpu_pool is None:
                self._encode_pass(items)
            else:  # one thread, on a worker (cpu_pool.py: an op's threads from this thread would sleep)
                self._cpu_pool.submit(self._encode_pass, items).result()
        except Exception as exc:
            self._encode_failed(items, exc)
            return
        self.stats["encoder_passes"] += 1
        for row, take in items:
            self._guarded(row, lambda r, n=take: self._encoded(r, n))

    def _encode_failed(self, items: list[tuple[Row, int]], exc: BaseException) -> None:
        """An encoder pass over `items` failed and left their K/V as they were. Out of memory, they retry
        in halves and a row that runs out alone fails alone; any other error fails them."""
        if not out_of_memory(exc):
            log.error("encoder pass of %d rows failed", len(items), exc_info=exc)
            for row, _ in items:
                self._finish(row, error=exc)
            return
        if len(items) == 1:
            self._finish(items[0][0], error=exc)
            return
        log.warning("out of memory in an encoder pass of %d rows: retrying in halves", len(items))
        half = len(items) // 2
        self._encode_rows(items[:half])
        self._encode_rows(items[half:])

    def _encoder_groups(self, items: list[tuple[Row, int]]) -> list[list[tuple[Row, int]]] | None:
        """On a CPU with several cores, an encoder pass of base-weight rows as one group per core, balanced
        by tokens (each row's tokens stay in one group); None where it runs as one pass (`_cpu_groups`)."""
        if len(items) < 2 or not self._groupable([row for row, _ in items]):
            return None
        groups: list[list[tuple[Row, int]]] = [[] for _ in range(min(self._cpu_threads, len(items)))]
        tokens = [0] * len(groups)
        for item in sorted(items, key=lambda item: -item[1]):
            lightest = tokens.index(min(tokens))
            groups[lightest].append(item)
            tokens[lightest] += item[1]
        return groups

    def _encode_groups(self, groups: list[list[tuple[Row, int]]]) -> None:
        """The groups' encoder passes side by side on the pool's workers (each writes its own rows' K/V).
        A group that fails leaves its rows' K/V as they were: out of memory, its rows retry as
        `_encode_rows` retries them; the other groups keep their result."""
        self.runner.use_adapter(None)  # here, not in the workers: it changes the modules
        futures = self._in_pool(self._encode_pass, [(group,) for group in groups])
        if any(future.exception() is None for future in futures):
            self.stats["encoder_passes"] += 1
        for group, future in zip(groups, futures, strict=True):
            error = future.exception()
            if error is not None:
                self._encode_failed(group, error)
                continue
            for row, take in group:
                self._guarded(row, lambda r, n=take: self._encoded(r, n))

    def _in_pool(self, fn: Callable[..., Any], calls: list[tuple]) -> list[Future]:
        """fn(*args) for each args of `calls` on the pool's workers, side by side; returns once every one
        has ended (also when submitting failed part way: none may still run when the caller goes on)."""
        futures: list[Future] = []
        try:
            for args in calls:
                futures.append(self._cpu_pool.submit(fn, *args))  # type: ignore[union-attr]
        finally:
            wait(futures)
        return futures

    @torch.inference_mode()  # thread-local: also when a pool worker runs it
    def _encode_pass(self, items: list[tuple[Row, int]]) -> None:
        """Prompt chunks and committed canvases (the slot's argmax) right-padded into one (B, n) batch."""
        width, device = max(take for _, take in items), self.runner.device
        host = torch.zeros((len(items), width), dtype=torch.long)
        commits = []
        for b, (row, take) in enumerate(items):
            if row.phase is Phase.COMMIT:
                commits.append((b, row.slot))
            else:
                host[b, :take] = torch.tensor(row.request.prompt_ids[row.prompt_done : row.prompt_done + take])
        ids = host.to(device)
        if commits:
            rows, slots = (to_device(list(c), device) for c in zip(*commits, strict=True))
            ids[rows, : self.runner.canvas_length] = self.slots.argmax[slots]
        slots, counts = [row.slot for row, _ in items], [take for _, take in items]
        cache, masks, positions = self.kv.encoder(slots, counts, width)
        with self.runner.adapters_per_row([row.request.adapter for row, _ in items]):
            self.runner.encode(cache, ids, self.runner.masks(masks), positions)
        try:
            self.kv.advance(slots, counts)
        except Exception as exc:  # lengths or sliding windows part moved: the pass cannot be run again
            raise KVAdvanceFailed(f"moving {len(slots)} rows' K/V after their encoder pass failed: {exc!r}") from exc

    def _encoded(self, row: Row, take: int) -> None:
        """A row's tokens are in its slot: a commit starts the next canvas, and so does the last prompt chunk."""
        row.encoded += take
        if row.phase is Phase.COMMIT:
            self._start_canvas(row)
            return
        row.prompt_done += take
        if row.prompt_done == len(row.request.prompt_ids):
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
        """One decoder pass for all denoising rows (whatever their adapters), the sampler over tiles of
        rows, then the step's one read on the host: each row's flags and argmax canvas, in one tensor."""
        rows = [r for r in self.rows if r.phase is Phase.DENOISE and self._adapter_loaded(r)]
        if not rows:
            return
        stepped = self._denoise_rows(sorted(rows, key=is_fast))  # exact rows first: tiles of one mode each
        if not stepped:
            return
        report = torch.cat([r for _, r in stepped]).cpu()  # (rows, 1 + C): flags, then the argmax canvas
        flags = report[:, 0].tolist()
        for i, row in enumerate(row for rows, _ in stepped for row in rows):
            self._guarded(row, lambda r, i=i: self._update(r, flags[i], report[i, 1:]))

    def _denoise_rows(self, rows: list[Row]) -> list[tuple[list[Row], torch.Tensor]]:
        """One step of `rows`. Out of memory, they retry in halves (random streams rewound, so a retried
        row's output is what it would have been); a row that runs out of memory alone fails alone. Any
        other error in a batched pass cannot be told apart by row: it fails this pass's rows only."""
        states = [row.generator.get_state() for row in rows]
        try:
            stepped, report = self._pass(rows)
        except Exception as exc:
            if not out_of_memory(exc):
                log.error("decoder pass of %d rows failed", len(rows), exc_info=exc)
                for row in rows:
                    self._finish(row, error=exc)
                return []
            for row, state in zip(rows, states, strict=True):
                row.generator.set_state(state)
            if len(rows) == 1:
                self._finish(rows[0], error=exc)
                return []
            log.warning("out of memory in a pass of %d rows: retrying in halves", len(rows))
            half = len(rows) // 2
            return self._denoise_rows(rows[:half]) + self._denoise_rows(rows[half:])
        return [] if report is None else [(stepped, report)]

    def _pass(self, rows: list[Row]) -> tuple[list[Row], torch.Tensor | None]:
        """One step of `rows`: their decoder pass and sampler, as one computation or, on a CPU with several
        cores, as groups of rows side by side (`_cpu_groups`). The rows' slots change only once every part
        has run, so a failure leaves them as they were. Returns the rows in the order of the report and the
        report (B, 1 + C): flags and argmax canvases (none where every group failed)."""
        groups = self._cpu_groups(rows)
        if groups is None:
            parts = [(rows, self._compute(rows, draw_first=True))]
        else:
            parts = self._compute_groups(groups)
            if not parts:
                return [], None
        self.stats["decoder_passes"] += 1
        self.stats["rows_in_decoder"] += len(rows)
        reports = []
        for _, (index, tiles, results) in parts:
            for (out, soft), tile in zip(results, tiles, strict=True):
                self.slots.store(index[tile], out, soft)
                reports.append(torch.cat([out.flags[:, None].long(), out.argmax], dim=1))
        return [row for group, _ in parts for row in group], torch.cat(reports)

    def _compute_groups(self, groups: list[list[Row]]) -> list[tuple[list[Row], Any]]:
        """The groups' passes side by side on the pool's workers. Out of memory in any group raises it (the
        caller retries every row, streams rewound); any other error fails that group's rows only. Returns
        the other groups' (rows, `_compute` result)."""
        self.runner.use_adapter(None)  # here, not in the workers: it changes the modules
        ahead = self._draw_beside(groups)
        try:
            futures = self._in_pool(self._compute, [(group, False, a) for group, a in zip(groups, ahead, strict=True)])
        finally:  # no draw may outlive this call (a retry rewinds the generators)
            wait([a for a in ahead if a is not None])
        errors = [future.exception() for future in futures]
        for error in errors:
            if error is not None and out_of_memory(error):
                raise error
        parts = []
        for group, future, error in zip(groups, futures, errors, strict=True):
            if error is None:
                parts.append((group, future.result()))
                continue
            log.error("decoder pass of %d rows failed", len(group), exc_info=error)
            for row in group:
                self._finish(row, error=error)
        return parts

    def _cpu_groups(self, rows: list[Row]) -> list[list[Row]] | None:
        """On a CPU with several cores, a pass of base-weight rows runs as one group of rows per core (up to
        one row a group), each a decoder pass over its own slot range on a worker with one intra-op thread
        (cpu_pool.py): a pass of fewer rows than cores leaves cores idle, which on the small models a CPU
        serves costs less than an op's threads do. None where a pass runs as one: on a GPU, on one core,
        with CUDA graphs' buckets, or with adapters (they change the shared modules per pass)."""
        if self.graphs is not None or not self._groupable(rows):
            return None
        by_slot = sorted(rows, key=lambda row: row.slot)  # disjoint slot ranges: each group writes its own K/V
        return [sorted(group, key=is_fast) for group in split_evenly(by_slot, self._cpu_threads)]

    def _draw_beside(self, groups: list[list[Row]]) -> list[Future | None]:
        """With fewer groups than cores (a lone row), each group's draws start on an idle worker, to run
        beside its decoder pass: they depend on the row's generator only. One future (or None) a group."""
        spare = self._cpu_threads - len(groups)
        ahead: list[Future | None] = []
        try:
            for group in groups:
                exact = any(not is_fast(row) for row in group)
                ahead.append(self._cpu_pool.submit(self._draw_tiles, group) if exact and spare > 0 else None)  # type: ignore[union-attr]
                spare -= ahead[-1] is not None
        except BaseException:  # a pool shut down part way: no draw already made may outlive this call
            wait([a for a in ahead if a is not None])
            raise
        return ahead

    def _draw_tiles(self, rows: list[Row]) -> list[TileDraws | None]:
        """Each exact tile's draws, as `_compute` tiles `rows` (None for a fast tile: nothing to draw)."""
        C, V, device = self.runner.canvas_length, self.runner.vocab_size, self.runner.device
        tiles = mode_tiles(rows, self.tile_rows)
        return [
            None if is_fast(rows[t.start]) else draw_noise([row.generator for row in rows[t]], C, V, device)
            for t in tiles
        ]

    def _groupable(self, rows: list[Row]) -> bool:
        """Whether `rows` may run as groups on the pool: there is one, and they all use the base weights."""
        return self._cpu_pool is not None and all(row.request.adapter is None for row in rows)

    def _compute(
        self, rows: list[Row], draw_first: bool, ahead: Future | None = None
    ) -> tuple[torch.Tensor, list[slice], list[Any]]:
        """Decoder pass over the slot range of `rows` (slots between them that are not in the pass are
        computed and dropped), then the sampler tile by tile; nothing stored. Returns the rows' slot
        index, the tiles and each tile's (TileOutput, soft embeddings). `draw_first`: on the CPU, draw
        every tile's noise in the pool first; `ahead`: the tiles' draws, being made beside the pass
        (`_draw_beside`); else each tile draws in this thread just before its step."""
        C, V, device = self.runner.canvas_length, self.runner.vocab_size, self.runner.device
        with torch.inference_mode():  # thread-local: a pool worker enters it too
            tiles = mode_tiles(rows, self.tile_rows)
            drawn = self._draw_first(rows, tiles) if draw_first else [None] * len(tiles)
            slots = [row.slot for row in rows]
            index = to_device(slots, device)  # (B,)
            hidden = self._decode(rows, slots, index)
            if ahead is not None:
                drawn = ahead.result()
            results = []
            for i, tile in enumerate(tiles):
                if is_fast(rows[tile.start]):
                    results.append(self._sample_fast(hidden[tile], index[tile], slots[tile], rows[tile]))
                    continue
                draws = drawn[i] or draw_noise([row.generator for row in rows[tile]], C, V, device)
                drawn[i] = None
                results.append(self._sample(hidden[tile], index[tile], slots[tile], draws, rows[tile]))
                del draws
        return index, tiles, results

    def _decode(self, rows: list[Row], slots: list[int], index: torch.Tensor) -> torch.Tensor:
        """The rows' hidden states (B, C, H) from one decoder pass: a bucketed pass (a CUDA graph's replay)
        when every row uses the base weights and the pass fits a bucket, else the eager pass over the
        rows' slot range. Slots in the pass but not among `rows` are computed and dropped."""
        lo, hi = min(slots), max(slots) + 1
        hidden = None
        if self.graphs is not None and all(row.request.adapter is None for row in rows):
            self.runner.use_adapter(None)  # for uncaptured passes; a replay runs the captured kernels
            hidden = self.graphs.run(hi, max(self.kv.length[s] for s in slots))
        if hidden is None:
            hidden = self._eager_decode(rows, lo, hi)
        else:
            lo = 0
            self.stats["graph_passes"] += 1
        if slots != list(range(lo, hi)):  # idle slots in the range, or another order: the rows' hidden
            hidden = hidden.index_select(0, index - lo)
        return hidden

    def _eager_decode(self, rows: list[Row], lo: int, hi: int) -> torch.Tensor:
        """The decoder pass over slots [lo, hi), its keys just as long as the longest prefix needs, each
        row with its own adapter: hidden (hi - lo, C, H)."""
        kv, masks, positions = self.kv.decoder(lo, hi, self.runner.canvas_length)
        canvas, soft = self.slots.canvas[lo:hi], self.slots.soft[lo:hi]
        adapters: list[Any] = [IDLE] * (hi - lo)
        for row in rows:
            adapters[row.slot - lo] = row.request.adapter
        with self.runner.adapters_per_row(adapters):
            return self.runner.decode(canvas, soft, kv, self.runner.masks(masks), positions)

    def _draw_first(self, rows: list[Row], tiles: list[slice]) -> list[TileDraws | None]:
        """A generator draws serially, on one core: on a CPU with several cores (a pass run as one, for
        example with adapters) every exact tile's draws are made first, row ranges side by side in the
        pool, and waited for before the decoder pass (alongside it they would take cores from the pass's
        own threads and slow both: 195 against 180 ms a 16-row pass of bench/engine.py). Elsewhere
        nothing is drawn here: each tile draws in the computing thread just before its step (on a GPU only
        one tile's draws then exist at a time)."""
        if self._cpu_pool is None:
            return [None] * len(tiles)
        C, V, device = self.runner.canvas_length, self.runner.vocab_size, self.runner.device
        drawn: list[TileDraws | None] = []
        pending: list[Future] = []
        try:
            for tile in tiles:
                if is_fast(rows[tile.start]):  # counter-based noise: nothing to draw
                    drawn.append(None)
                    continue
                generators = [row.generator for row in rows[tile]]
                draws = empty_draws(len(generators), C, V, device)
                drawn.append(draws)
                chunks = [range(i, len(generators), self._cpu_threads) for i in range(self._cpu_threads)]
                pending += [self._cpu_pool.submit(draw_rows, draws, generators, c) for c in chunks if c]
        finally:  # also when a later tile runs out of memory: no draw may outlive this call
            wait(pending)
        for future in pending:
            future.result()  # a draw's error, if any, is this pass's
        return drawn

    def _sample(
        self, hidden: torch.Tensor, index: torch.Tensor, slots: list[int], draws: TileDraws, rows: list[Row]
    ) -> tuple[TileOutput, torch.Tensor]:
        """The sampler step of one tile; full-vocabulary tensors live only inside it. hidden (B, C, H)."""
        state = self.slots.gather(index, slots)
        logits = self.runner.logits(hidden)  # (B, C, V)
        out, probs = denoise_tile(logits, state, draws)
        keep_logprobs(rows, probs, out.argmax)
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
        if row.request.logprobs is not None and row.step_logprobs is not None:
            row.logprobs += committed_entries(row.step_logprobs, new, row.request.logprobs)
        end = find_end(row.request, row.generated, first_new)
        kept = row.generated[first_new : end[0]] if end else new
        row.emit("canvas", {"canvas": row.canvases - 1, "token_ids": kept, "steps": row.step, "final": end is not None})
        if end is not None:
            row.generated = row.generated[: end[0]]
            row.logprobs = row.logprobs[: end[0]]
            self._finish(row, end[1])
        else:
            row.phase = Phase.COMMIT

    def _result(self, row: Row, reason: str) -> EngineResult:
        logprobs = list(row.logprobs) if row.request.logprobs is not None else None
        return EngineResult(
            row.request_id,
            list(row.generated),
            reason,
            row.steps_total,
            row.canvases,
            len(row.request.prompt_ids),
            logprobs,
        )

    def _finish(self, row: Row, reason: str = "error", error: BaseException | None = None) -> None:
        if row in self.rows:
            self.rows.remove(row)
            self.slots.release(row.slot)
            self.kv.reset(row.slot)
            with self._lock:
                self.scheduler.release(row.cost)
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


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says memory ran out: a GPU's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, KVAdvanceFailed):
        return False  # its rows cannot be retried, whatever its cause
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


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


def keep_logprobs(rows: list[Row], probs: torch.Tensor, committed: torch.Tensor) -> None:
    """For the rows of a tile that asked for log-probabilities, keep this step's (a commit reads them).
    probs (B, C, V), committed (B, C): what a commit of this step would write."""
    wanted = [row.request.logprobs for row in rows]
    if all(k is None for k in wanted):
        return
    chosen, top_ids, top = step_logprobs(probs, committed, max(k or 0 for k in wanted))
    for b, (row, k) in enumerate(zip(rows, wanted, strict=True)):
        if k is not None:
            row.step_logprobs = StepLogprobs(chosen[b], top_ids[b, :, :k], top[b, :, :k])


def sampler_tile_rows(runner: ModelRunner, budget_bytes: int | None) -> int:
    """Rows per sampler tile. A step holds about four (C, V) float32 tensors per row (logits, softmax,
    exponential draws, the entropy's softmax); a tile gets `budget_bytes` of them: by default half the
    GPU memory free after the weights, or on the CPU `CPU_SAMPLER_BYTES`."""
    per_row = 4 * runner.canvas_length * runner.vocab_size * 4
    if budget_bytes is None and runner.device.type == "cuda":
        budget_bytes = torch.cuda.mem_get_info(runner.device)[0] // 2
    return max(1, (budget_bytes or CPU_SAMPLER_BYTES) // per_row)


def row_state_bytes(runner: ModelRunner) -> int:
    """A slot's canvas-sized state besides its K/V: self-conditioning input (C, H) and a few (C,) tensors."""
    C, H = runner.canvas_length, runner.hidden_size
    return C * H * runner.dtype.itemsize + 8 * C * 8


def kv_budget(runner: ModelRunner, budget_bytes: int | None) -> int:
    """Bytes the K/V slots may take: `budget_bytes`, or half the GPU memory free now (after the weights;
    the other half is left to the passes' activations and the sampler's tiles), or on the CPU
    `CPU_MEMORY_BUDGET`."""
    if budget_bytes is not None:
        return budget_bytes
    if runner.device.type == "cuda":
        cached = torch.cuda.memory_reserved(runner.device) - torch.cuda.memory_allocated(runner.device)
        return (torch.cuda.mem_get_info(runner.device)[0] + cached) // 2
    return CPU_MEMORY_BUDGET
