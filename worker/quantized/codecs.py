"""How a weight is stored quantized: nf4 (bitsandbytes 4-bit blocks, blockwise absmax), int8 and fp8 (e4m3),
both with one scale per output row. A codec turns a (N, K) or (E, N, K) weight into named tensors and turns
the stored tensors of some experts back into weights. Knows tensors; not modules, files or devices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

NF4_BLOCK = 64  # bitsandbytes' QLoRA default: one fp32 absmax per 64 weights (0.5 bit per weight)
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3 value


class QuantizationError(ValueError):
    """A weight, checkpoint or method that cannot be quantized or loaded as asked."""


def bnb() -> Any:
    """bitsandbytes.functional, imported on first use; its CPU backend's note about optional hub kernels
    (which we never fetch) is kept out of the logs."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import bitsandbytes.functional as functional

    return functional


@dataclass(frozen=True)
class Spec:
    """Shape and dtype of one stored tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype


class Codec:
    """One method's storage. `suffixes` name the tensors stored next to the weight's own (`name` + suffix)."""

    method: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]

    def quantize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """(…, N, K) weight -> {"": data, suffix: stats, ...}."""
        raise NotImplementedError

    def specs(self, shape: tuple[int, ...]) -> dict[str, Spec]:
        """What `quantize` returns for a weight of `shape`, without computing it."""
        raise NotImplementedError

    def dequantize(self, stored: dict[str, torch.Tensor], ids: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype,
                   out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Experts `ids` of a stored (E, N, K) weight -> (n, N, K) in `dtype` (into `out` where the backend can)."""
        raise NotImplementedError


class NF4(Codec):
    """bitsandbytes nf4: pairs of 4-bit codes packed in uint8, one fp32 absmax per block of 64 weights.
    Experts are quantized as one flat run, so each expert owns whole blocks (N*K must be a multiple of 64)."""

    method = "nf4"
    suffixes = ("_absmax",)

    def quantize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        if weight.dim() == 3 and (weight.shape[1] * weight.shape[2]) % NF4_BLOCK:
            raise QuantizationError(f"experts of shape {tuple(weight.shape)}: N*K is not a multiple of {NF4_BLOCK}")
        lead = weight.shape[0] if weight.dim() == 3 else 1
        flat = weight.detach().contiguous().reshape(-1)
        if flat.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            flat = flat.float()
        packed, state = bnb().quantize_4bit(flat, blocksize=NF4_BLOCK, compress_statistics=False, quant_type="nf4")
        squeeze = weight.dim() == 2
        packed, absmax = packed.reshape(lead, -1), state.absmax.float().reshape(lead, -1)
        return {"": packed[0] if squeeze else packed, "_absmax": absmax[0] if squeeze else absmax}

    def specs(self, shape: tuple[int, ...]) -> dict[str, Spec]:
        *lead, n, k = shape
        blocks = -(-n * k // NF4_BLOCK)
        return {"": Spec((*lead, -(-n * k // 2)), torch.uint8), "_absmax": Spec((*lead, blocks), torch.float32)}

    def state(self, absmax: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
        """A bitsandbytes QuantState over these blocks (the nf4 code table on absmax's device)."""
        functional = bnb()
        code = functional.get_4bit_type("nf4", device=absmax.device)
        return functional.QuantState(
            absmax=absmax.reshape(-1), shape=torch.Size(shape), code=code, blocksize=NF4_BLOCK,
            quant_type="nf4", dtype=dtype,
        )  # fmt: skip

    def dequantize(self, stored: dict[str, torch.Tensor], ids: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype,
                   out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        packed = stored[""].index_select(0, ids)  # (n, N*K/2)
        # A flat shape: the CPU kernel cuts blocks per row of the shape it is given, the flat run did not.
        flat = (len(ids) * shape[0] * shape[1],)
        state = self.state(stored["_absmax"].index_select(0, ids), flat, dtype)
        if out is not None and packed.device.type == "cuda":  # the CPU backend has no out= variant
            target = out[: len(ids)].view(-1)
            return bnb().dequantize_4bit(packed.reshape(-1, 1), state, out=target).view(len(ids), *shape)
        return bnb().dequantize_4bit(packed.reshape(-1, 1), state).view(len(ids), *shape)


class RowScaled(Codec):
    """One scale per output row: weight ≈ data * scale[..., None]. int8 (LLM.int8's rowwise format) and
    fp8 e4m3 share it."""

    suffixes = ("_scale",)
    dtype: ClassVar[torch.dtype]
    top: ClassVar[float]

    def quantize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        w = weight.detach().float()
        scale = (w.abs().amax(dim=-1) / self.top).clamp(min=1e-12)  # (…, N)
        scaled = w / scale[..., None]
        data = scaled.round().clamp(-self.top, self.top).to(self.dtype) if self.dtype == torch.int8 else scaled.to(FP8)
        return {"": data, "_scale": scale}

    def specs(self, shape: tuple[int, ...]) -> dict[str, Spec]:
        return {"": Spec(tuple(shape), self.dtype), "_scale": Spec(tuple(shape[:-1]), torch.float32)}

    def dequantize(self, stored: dict[str, torch.Tensor], ids: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype,
                   out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        data = stored[""].index_select(0, ids)  # (n, N, K)
        scale = stored["_scale"].index_select(0, ids)[..., None].to(dtype)  # (n, N, 1)
        target = out[: len(ids)] if out is not None else None
        return torch.mul(data.to(dtype), scale, out=target) if target is not None else data.to(dtype) * scale


class Int8(RowScaled):
    method = "int8"
    dtype = torch.int8
    top = 127.0


class Fp8(RowScaled):
    method = "fp8"
    dtype = FP8
    top = FP8_MAX


CODECS: dict[str, Codec] = {c.method: c for c in (NF4(), Int8(), Fp8())}
METHODS = tuple(CODECS)


def codec(method: str) -> Codec:
    """The codec of `method`; raises naming the known ones."""
    if method not in CODECS:
        raise QuantizationError(f"unknown quantization method {method!r}; known: {', '.join(METHODS)}")
    return CODECS[method]
