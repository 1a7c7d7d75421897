"""Decoder passes of fixed shape, captured in CUDA graphs at start-up and replayed every tick.

A bucket is (rows, prefix): a pass over slots [0, rows) whose keys hold `prefix` prefix entries plus the
canvas on every row. Rows are the engine's lowest slots (new rows take the lowest free slot, so running
rows stay packed there); a pass over rows up to slot `hi` with prefixes up to `longest` takes the
smallest bucket holding both. Slots of the bucket that are not in the pass (free, prefilling, or beyond
`hi`) are computed and dropped: they write their canvas K/V only after their own prefix, where nothing
valid lives, exactly as idle slots inside an eager pass's range do.

The inputs a pass reads already live at fixed addresses, written in place between ticks: the canvas and
self-conditioning input of every slot (`Slots`), the slots' lengths and K/V (`SlotKV`). Masks, positions
and where the canvas K/V goes are computed inside the pass from the lengths, so a replay needs no copy
in; its hidden states are copied into one output buffer, and `run` returns a view of it.

On a GPU each bucket's pass is captured once (warm-up on a side stream, then `torch.cuda.graph`, all
graphs sharing one memory pool: they are replayed one at a time, in any order, which is safe because no
allocation of the pool outlives a replay: each one's result is copied into `output`, allocated outside
the pool, and read before the next replay); no compilation. Without capture (`capture=False`, the CPU
stand-in used by tests) the same pass runs eagerly into the same buffer. Outside the buckets `run`
returns None and the caller runs its eager pass.

What can be captured (`capture_blocker`): the pass reads no host value except in the MoE experts, and
there only on some paths. transformers' grouped_mm experts (its default) route on the device (sort,
histc, cumsum) and call ATen's grouped matmul, whose CUTLASS kernel reads the offsets on the device, but
only for bfloat16 on compute capability 9.x/10.x (Hopper, Blackwell); elsewhere ATen falls back to a
loop that copies the offsets to the host (`offs.cpu()`), which a capture cannot hold. The eager experts
(`nonzero`, a Python loop over the routed experts) and our quantized experts (`bincount().tolist()`)
read the host too. On those the engine captures nothing (a failed capture would also leave the caching
allocator and the pool in states PyTorch does not promise to repair), and passes stay eager.

Numerics: padding rows change no real row's output (bit for bit on the CPU). Padding the keys does
change the last bits: SDPA reduces the keys in blocks that depend on their count, so a bucketed pass
equals the exact-length eager pass to rounding, not bit for bit (see docs/benchmarks.md).

Knows the runner, the slots and their K/V; nothing of requests, adapters or sampling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from worker.engine.kv import SlotKV
from worker.engine.runner import ModelRunner
from worker.engine.slots import Slots

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32)
GRAPH_MODES = ("auto", "off", "uncaptured")  # auto: captured on CUDA, none on the CPU
GROUPED_MM_MAJORS = (9, 10)  # compute capabilities whose grouped matmul reads its offsets on the device


def capture_blocker(runner: ModelRunner, capability: tuple[int, int] | None = None) -> str | None:
    """Why the decoder pass of `runner` cannot be captured on a GPU of `capability` (default: the model's
    GPU), or None when it can: every path of the pass that reads a host value (see the module's note)."""
    if getattr(runner.model, "canvas_quantization", "none") != "none":
        return "quantized weights (the quantized experts read routing counts on the host: bincount().tolist())"
    for layer in runner.decoder.layers:
        experts = getattr(layer, "experts", None)
        if experts is None:
            continue
        if not type(experts).__module__.startswith("transformers."):
            return f"experts {type(experts).__name__} are not transformers' (not known to route on the device)"
        implementation = getattr(getattr(experts, "config", None), "_experts_implementation", None)
        if implementation != "grouped_mm":
            return f"experts_implementation {implementation!r}: only 'grouped_mm' routes without a host read"
        if experts.gate_up_proj.dtype != torch.bfloat16:
            return (
                f"expert weights in {experts.gate_up_proj.dtype}: ATen's grouped matmul reads its offsets on "
                "the device for bfloat16 only (its fallback copies them to the host)"
            )
    major, minor = capability or torch.cuda.get_device_capability(runner.device)
    if major not in GROUPED_MM_MAJORS:
        return (
            f"compute capability {major}.{minor}: ATen's grouped matmul reads its offsets on the device on "
            f"{' and '.join(f'{m}.x' for m in GROUPED_MM_MAJORS)} only (its fallback copies them to the host)"
        )
    return None


def row_buckets(slots: int) -> tuple[int, ...]:
    """The row counts passes are captured for: ROW_BUCKETS capped at the engine's slot count."""
    return tuple(sorted({min(b, slots) for b in ROW_BUCKETS}))


def prefix_buckets(canvas: int, max_context: int) -> tuple[int, ...]:
    """Prefix lengths passes are captured for: the canvas length doubled up to the context (the last
    bucket is the context itself, the longest prefix a row can have)."""
    buckets, size = [], canvas
    while size < max_context:
        buckets.append(size)
        size *= 2
    return (*buckets, max_context)


class DecoderGraphs:
    """The bucketed decoder passes of one engine and their output buffer (rows, C, H)."""

    def __init__(
        self,
        runner: ModelRunner,
        kv: SlotKV,
        slots: Slots,
        rows: tuple[int, ...],
        prefixes: tuple[int, ...],
        capture: bool,
    ) -> None:
        self.runner, self.kv, self.slots = runner, kv, slots
        self.rows, self.prefixes = tuple(sorted(rows)), tuple(sorted(prefixes))
        C, H = runner.canvas_length, runner.hidden_size
        self.output = torch.empty((self.rows[-1], C, H), dtype=runner.dtype, device=runner.device)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.captured, self.capture_seconds = capture, 0.0
        self.weights = weight_addresses(runner)
        if capture:
            with torch.cuda.device(runner.device):  # streams and captures on the model's GPU
                self._capture_all()

    def weights_unchanged(self) -> bool:
        """Whether every weight the passes read is still where it was when they were captured."""
        return self.weights <= weight_addresses(self.runner)

    def bucket(self, hi: int, longest: int) -> tuple[int, int] | None:
        """The smallest bucket for a pass over slots [0, hi) whose rows' prefixes are at most `longest`."""
        rows = next((b for b in self.rows if b >= hi), None)
        prefix = next((p for p in self.prefixes if p >= longest), None)
        return None if rows is None or prefix is None else (rows, prefix)

    def run(self, hi: int, longest: int) -> torch.Tensor | None:
        """Hidden states (hi, C, H) of slots [0, hi): a view of the output buffer, valid until the next
        run. None when the pass falls outside the buckets, or on a GPU outside those that were captured."""
        bucket = self.bucket(hi, longest)
        if bucket is None:
            return None
        if not self.captured:
            self._pass(*bucket)
        elif bucket in self.graphs:
            self.graphs[bucket].replay()
        else:
            return None  # its capture failed: an eager pass instead
        return self.output[:hi]

    @torch.inference_mode()
    def _pass(self, rows: int, prefix: int) -> None:
        """The pass a bucket captures: from the slots' lengths, canvas and self-conditioning input."""
        C = self.runner.canvas_length
        cache, masks, positions = self.kv.decoder_bucket(rows, prefix, C)
        canvas, soft = self.slots.canvas[:rows], self.slots.soft[:rows]
        hidden = self.runner.decode(canvas, soft, cache, self.runner.masks(masks), positions)
        self.output[:rows].copy_(hidden)

    def _capture_all(self) -> None:
        """Capture every bucket, largest first (the shared pool is sized by the largest pass and the
        others reuse its blocks). A bucket whose warm-up fails (out of memory) is left to eager passes;
        a failed capture (an operation that cannot be captured) leaves every pass eager and hands the
        pool back (`abandon`)."""
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.runner.device)
        for rows, prefix in sorted(((r, p) for r in self.rows for p in self.prefixes), reverse=True):
            try:
                warm_up(lambda r=rows, p=prefix: self._pass(r, p), stream)
            except Exception:  # out of memory, most likely: this shape's passes stay eager (and may fail there)
                log.exception("decoder graph (%d rows, prefix %d): its warm-up failed, left eager", rows, prefix)
                continue
            try:
                self.graphs[(rows, prefix)] = capture(lambda r=rows, p=prefix: self._pass(r, p), pool, stream)
            except Exception:
                log.exception("capturing decoder graphs failed: every decoder pass stays eager")
                self.graphs.clear()
                abandon(pool, self.runner.device)
                break
        torch.cuda.synchronize(self.runner.device)
        self.capture_seconds = time.perf_counter() - started
        log.info("captured %d decoder graphs in %.1f s", len(self.graphs), self.capture_seconds)


def weight_addresses(runner: ModelRunner) -> frozenset[int]:
    """Where the decoder's parameters and buffers are (a captured graph reads them there)."""
    tensors = [*runner.decoder.parameters(), *runner.decoder.buffers()]
    return frozenset(t.data_ptr() for t in tensors)


def warm_up(fn: Callable[[], None], stream: torch.cuda.Stream) -> None:
    """Run `fn` once on a side stream before capture (lazy initialisation, e.g. library handles and
    workspaces, must not happen inside a capture), then make the current stream wait for it."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)


def capture(fn: Callable[[], None], pool: object, stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
    """`fn`'s kernels as a graph in `pool`. thread_local: another engine's thread may allocate meanwhile.
    The outer stream context puts the thread's current stream back even when the capture fails:
    `torch.cuda.graph` restores it only after a successful `capture_end`, so a failed capture would
    leave every later eager pass of this thread on the capture stream."""
    graph = torch.cuda.CUDAGraph()
    with (
        torch.cuda.stream(stream),
        torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"),
    ):
        fn()
    return graph


def abandon(pool: Any, device: torch.device) -> None:
    """After a failed capture: stop routing allocations to `pool` and drop the failed graph's hold on
    it, then free what it cached. PyTorch's `capture_end` raises before it ends the pool's allocation
    and the failed graph never releases the pool (CUDAGraph::reset releases it only after a successful
    capture), so without this the pool's blocks stay reserved for good and the allocator keeps a capture
    marked underway. Private calls, so best effort: a failure is logged, not raised. The pinned host
    allocator's side of the capture has no Python call and stays as the failure left it: this is why
    `capture_blocker` refuses the models whose capture is known to fail, so that none is expected to."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    for name in ("_cuda_endAllocateToPool", "_cuda_releasePool"):
        try:
            getattr(torch._C, name)(index, pool)
        except Exception as exc:  # e.g. this PyTorch already ended it
            log.warning("after a failed capture, %s: %r", name, exc)
    torch.cuda.empty_cache()


def decoder_graphs(mode: str, runner: ModelRunner, kv: SlotKV, slots: Slots, max_context: int) -> DecoderGraphs | None:
    """The engine's bucketed passes for `mode` (GRAPH_MODES): captured on CUDA under "auto", run eagerly
    under "uncaptured" (the CPU stand-in), none under "off" or "auto" on the CPU."""
    if mode not in GRAPH_MODES:
        raise ValueError(f"graphs must be one of {', '.join(GRAPH_MODES)}, not {mode!r}")
    if mode == "off" or (mode == "auto" and runner.device.type != "cuda"):
        return None
    blocker = capture_blocker(runner) if mode == "auto" else None
    if blocker is not None:
        log.warning("decoder passes are not captured in CUDA graphs, they run eagerly: %s", blocker)
        return None
    rows = row_buckets(len(kv.length))
    prefixes = prefix_buckets(runner.canvas_length, max_context)
    return DecoderGraphs(runner, kv, slots, rows, prefixes, capture=mode == "auto")
