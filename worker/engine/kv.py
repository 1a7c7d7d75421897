"""Static KV slots: every row's encoder K/V in buffers allocated once, written in place, never re-padded.

Per layer one key and one value buffer of shape (slots, kv_heads, capacity, head_dim):
- a full-attention layer holds a row's whole context at its positions (0, 1, ...), capacity
  `max_context + extra`;
- a sliding layer holds the row's last `window - 1` tokens (what transformers' DynamicCache keeps, in the
  same order) at the front, capacity `window - 1 + extra`.
`extra` (the longest canvas or prefill chunk) is where a pass writes its new tokens' K/V: right after the
row's valid prefix. A decoder pass writes its canvas there and the next pass overwrites it; an encoder
pass writes its tokens there, and once the whole pass has succeeded `advance` makes them part of the
prefix (shifting a sliding window left when it overflows). A pass therefore never changes valid K/V
before it has succeeded: a pass that fails (out of memory) can be retried as if it never ran.

The keys a pass attends to are views of the buffers (a row range) or, for encoder passes of scattered
rows, one gather of the rows' prefixes; masks and positions are built on the device from the lengths.
Knows shapes and positions, nothing of requests or sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def to_device(values: list[int], device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A small host list on the device without blocking the host: a pinned buffer, copied asynchronously."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class KVShape:
    """One layer's buffer geometry."""

    sliding: bool
    heads: int
    head_dim: int
    capacity: int


def layer_shapes(text_config: Any, layer_types: list[str], window: int, max_context: int, extra: int) -> list[KVShape]:
    """Each layer's buffer: a sliding layer keeps `window - 1` tokens, a full one `max_context`, both plus
    `extra` for the new tokens of a pass."""
    shapes = []
    for index, layer_type in enumerate(layer_types):
        layer = text_config.per_layer_config[index] if hasattr(text_config, "per_layer_config") else text_config
        sliding = layer_type == "sliding_attention"
        capacity = (min(window - 1, max_context) if sliding else max_context) + extra
        shapes.append(KVShape(sliding, layer.num_key_value_heads, layer.head_dim, capacity))
    return shapes


def slot_bytes(shapes: list[KVShape], itemsize: int) -> int:
    """Bytes of one slot's K and V over all layers."""
    return sum(2 * s.heads * s.head_dim * s.capacity * itemsize for s in shapes)


class SlotKV:
    """The K/V buffers of `slots` rows and each slot's encoded length (host ints and a device copy)."""

    def __init__(
        self, shapes: list[KVShape], slots: int, window: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.shapes, self.window, self.device = shapes, window, device
        self.keys = [torch.zeros((slots, s.heads, s.capacity, s.head_dim), dtype=dtype, device=device) for s in shapes]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.length = [0] * slots  # host: tokens encoded per slot (its next position)
        self.lengths = torch.zeros(slots, dtype=torch.int32, device=device)  # the same, on the device

    def reset(self, slot: int) -> None:
        """A freed slot: no tokens, and its K/V zeroed. Passes read masked keys beyond a row's prefix (and
        a bucketed pass reads them on every row): a masked key weighs zero, but zero times a stale NaN
        (of a row that failed with NaN logits) is NaN."""
        self.length[slot] = 0
        self.lengths[slot] = 0
        for buffer in (*self.keys, *self.values):
            buffer[slot].zero_()

    def kept(self, length: int, sliding: bool) -> int:
        """Valid prefix entries of a layer for a row that encoded `length` tokens."""
        return min(length, self.window - 1) if sliding else length

    # ---- decoder passes: a contiguous slot range, canvas written after each row's prefix ----------------

    def decoder(self, lo: int, hi: int, C: int) -> tuple[DecoderKV, dict[bool, torch.Tensor | None], torch.Tensor]:
        """The K/V a decoder pass over slots [lo, hi) reads and writes, its masks by `sliding` (None where
        no row is padded) and the canvas positions (B, C), all from the lengths on the device."""
        kept = {sliding: [self.kept(n, sliding) for n in self.length[lo:hi]] for sliding in (False, True)}
        spans = {sliding: max(k) + C for sliding, k in kept.items()}
        padded = {sliding: min(k) != max(k) for sliding, k in kept.items()}
        return self._decoder_pass(lo, hi, C, spans, padded)

    def decoder_bucket(
        self, rows: int, prefix: int, C: int
    ) -> tuple[DecoderKV, dict[bool, torch.Tensor | None], torch.Tensor]:
        """A decoder pass of fixed shape (what a CUDA graph captures): slots [0, rows), keys up to `prefix`
        prefix entries plus the canvas on every row, masks always. Built from the lengths on the device
        alone, no host value, so the same kernels serve every tick; the caller checks that the prefixes of
        the rows it reads fit in `prefix` (a slot whose prefix does not is computed and must be dropped)."""
        spans = {sliding: self.kept(prefix, sliding) + C for sliding in (False, True)}
        return self._decoder_pass(0, rows, C, spans, {False: True, True: True})

    def _decoder_pass(
        self, lo: int, hi: int, C: int, spans: dict[bool, int], masked: dict[bool, bool]
    ) -> tuple[DecoderKV, dict[bool, torch.Tensor | None], torch.Tensor]:
        """Where the canvas K/V of slots [lo, hi) goes (after each row's prefix), the masks of the layer
        kinds that `masked` asks for (keys beyond a row's prefix and canvas hidden), and the canvas
        positions, for keys `spans` long; computed on the device from the slots' lengths."""
        lengths = self.lengths[lo:hi]  # (B,)
        offsets = torch.arange(C, dtype=torch.int32, device=self.device)
        writes, masks = {}, {}
        for sliding in (False, True):
            start = lengths.clamp(max=self.window - 1) if sliding else lengths  # (B,)
            writes[sliding] = (start[:, None] + offsets).long()  # (B, C): where the canvas K/V goes
            masks[sliding] = None
            if masked[sliding]:
                keep = torch.arange(spans[sliding], device=self.device)[None, :] < (start + C)[:, None]  # (B, L)
                masks[sliding] = keep[:, None, None, :].expand(-1, 1, C, -1)
        return DecoderKV(self, lo, hi, writes, spans), masks, lengths[:, None] + offsets

    # ---- encoder passes: rows anywhere, new tokens written after each row's prefix ---------------------

    def encoder(
        self, slots: list[int], counts: list[int], width: int
    ) -> tuple[EncoderKV, dict[bool, Any], torch.Tensor]:
        """The cache an encoder pass over `slots` uses (each row's `counts` new tokens, right-padded to
        `width`), its causal (and sliding-window) masks by `sliding`, and positions (B, width)."""
        device = self.device
        index = to_device(slots, device)
        lengths = to_device([self.length[s] for s in slots], device)  # (B,)
        new = torch.arange(width, device=device)
        positions = (lengths[:, None] + new).int()  # (B, width)
        masks, writes, spans = {}, {}, {}
        for sliding in (False, True):
            kept = to_device([self.kept(self.length[s], sliding) for s in slots], device)  # (B,)
            writes[sliding] = kept[:, None] + new  # (B, width): where the new K/V goes
            span = max(self.kept(self.length[s], sliding) for s in slots) + width
            spans[sliding] = span
            masks[sliding] = self._encoder_mask(slots, counts, lengths, kept, width, span, sliding)
        return EncoderKV(self, slots, index, writes, spans), masks, positions

    def _encoder_mask(
        self,
        slots: list[int],
        counts: list[int],
        lengths: torch.Tensor,
        kept: torch.Tensor,
        width: int,
        span: int,
        sliding: bool,
    ) -> torch.Tensor | None:
        """Key j of row b stands for position lengths[b] - kept[b] + j; query i for lengths[b] + i. Causal,
        and within the window on sliding layers. None where transformers passes none either (one row, one
        query or no prefix, every key inside the window): SDPA then takes its causal flag."""
        if len(slots) == 1 and (width == 1 or span == width) and (not sliding or span < self.window):
            return None
        query = (lengths[:, None] + torch.arange(width, device=self.device))[:, :, None]  # (B, W, 1)
        key = (lengths - kept)[:, None, None] + torch.arange(span, device=self.device)  # (B, 1, L)
        keep = key <= query
        if sliding:
            keep &= key > query - self.window
        return keep[:, None]  # (B, 1, width, L)

    def advance(self, slots: list[int], counts: list[int]) -> None:
        """After a successful encoder pass: the rows' new tokens join their prefixes; a sliding layer keeps
        its last window - 1 entries at the front (a row whose window overflows shifts left once)."""
        before = [self.length[s] for s in slots]
        for s, n in zip(slots, counts, strict=True):
            self.length[s] += n
        self.lengths[to_device(slots, self.device)] = to_device(
            [self.length[s] for s in slots], self.device, torch.int32
        )
        shifts = [self.kept(b, True) + n - self.kept(b + n, True) for b, n in zip(before, counts, strict=True)]
        if not any(shifts):
            return
        moving = [(s, k) for s, k in zip(slots, shifts, strict=True) if k]
        index = to_device([s for s, _ in moving], self.device)
        keep = self.window - 1
        source = to_device([k for _, k in moving], self.device)[:, None] + torch.arange(keep, device=self.device)
        for shape, keys, values in zip(self.shapes, self.keys, self.values, strict=True):
            if not shape.sliding:
                continue
            for buffer in (keys, values):
                rows = buffer.index_select(0, index)  # (M, H, cap, D)
                gather = source[:, None, :, None].expand(-1, shape.heads, -1, shape.head_dim)
                buffer[:, :, :keep].index_copy_(0, index, rows.gather(2, gather))


class DecoderKV:
    """What the decoder's attention layers get as `past_key_values`: each layer writes its canvas K/V
    after every row's prefix, in place, and attends to a view of the buffer (see `install`)."""

    is_compileable = False

    def __init__(self, kv: SlotKV, lo: int, hi: int, writes: dict, spans: dict) -> None:
        self.kv, self.lo, self.hi, self.writes, self.spans = kv, lo, hi, writes, spans

    def write_canvas(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys, values (B, H, C, D) -> the layer's keys and values to attend to, (B, H, L, D) views."""
        sliding = self.kv.shapes[layer].sliding
        index = self.writes[sliding][:, None, :, None].expand_as(keys)  # (B, H, C, D)
        out = []
        for buffer, states in ((self.kv.keys[layer], keys), (self.kv.values[layer], values)):
            rows = buffer[self.lo : self.hi]
            rows.scatter_(2, index, states)
            out.append(rows[:, :, : self.spans[sliding]])
        return out[0], out[1]


class EncoderKV:
    """What the encoder's attention layers get as `past_key_values` (transformers calls `update`): the new
    tokens' K/V written after each row's prefix, the rows' prefixes plus them returned."""

    is_compileable = False

    def __init__(self, kv: SlotKV, slots: list[int], index: torch.Tensor, writes: dict, spans: dict) -> None:
        self.kv, self.slots, self.index, self.writes, self.spans = kv, slots, index, writes, spans

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        sliding = self.kv.shapes[layer_idx].sliding
        span, positions = self.spans[sliding], self.writes[sliding]  # positions (B, width)
        out = []
        for buffer, states in ((self.kv.keys[layer_idx], keys), (self.kv.values[layer_idx], values)):
            buffer[self.index[:, None], :, positions] = states.transpose(1, 2)  # (B, width, H, D)
            if len(self.slots) == 1:
                out.append(buffer[self.slots[0] : self.slots[0] + 1, :, :span])
            else:
                out.append(buffer[:, :, :span].index_select(0, self.index))
        return out[0], out[1]


def install(decoder: Any) -> None:
    """Let the decoder's attention layers write into `DecoderKV` in place. Each layer's `append_to_cache`
    (which concatenates the encoder cache with the canvas K/V, a copy per layer per step) is replaced, on
    the instance, by one that writes into our buffers when handed a `DecoderKV` and otherwise does what
    the model's own method does, so `generate()` on the same model is unchanged."""
    for layer in decoder.layers:
        attention = layer.self_attn
        if getattr(attention, "_canvas_slots", False):
            continue
        own = type(attention).append_to_cache

        def append(past_key_values: Any, keys: torch.Tensor, values: torch.Tensor, _a=attention, _own=own):
            if isinstance(past_key_values, DecoderKV):
                return past_key_values.write_canvas(_a.layer_idx, keys, values)
            return _own(_a, past_key_values, keys, values)

        attention.append_to_cache = append
        attention._canvas_slots = True
