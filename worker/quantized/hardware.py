"""Whether this worker's device can run a quantization method, and whether its scaled fp8 matmuls work.
Knows torch's devices; not the model's layout."""

from __future__ import annotations

import logging

import torch
from torch import nn

from worker.quantized.codecs import FP8, QuantizationError
from worker.quantized.experts import QuantizedExperts
from worker.quantized.linears import Fp8Linear

log = logging.getLogger(__name__)
FP8_CAPABILITY = (8, 9)  # e4m3 tensor cores: Ada (8.9), Hopper (9.0) and newer


class UnsupportedQuantization(QuantizationError):
    """A quantized model this worker's hardware cannot serve (raised before the worker takes a job)."""


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return f"a {device.type} device"
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"


def check_hardware(method: str, device: torch.device) -> None:
    """Raise UnsupportedQuantization when `device` cannot run `method` (nf4 and int8 run everywhere
    bitsandbytes does, CPU included; fp8 needs a CUDA GPU of compute capability 8.9 or newer)."""
    if method != "fp8":
        return
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_CAPABILITY:
        return
    raise UnsupportedQuantization(
        f"fp8 weights need a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); this worker "
        f"has {describe(device)}. Quantize the model with --method nf4 or int8 to serve it here."
    )


def _probe(fn: object, what: str) -> bool:
    try:
        fn()  # type: ignore[operator]
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        log.warning("%s unavailable (%s): fp8 falls back to dequantize-then-matmul there", what, exc)
        return False
    return True


def scaled_mm_works(device: torch.device) -> bool:
    """torch._scaled_mm with rowwise scales and bf16 output on `device`."""
    a = torch.ones(16, 32, device=device).to(FP8)
    b = torch.ones(16, 32, device=device).to(FP8)
    ones = torch.ones(16, 1, device=device)
    return _probe(lambda: torch._scaled_mm(a, b.t(), ones, ones.t(), out_dtype=torch.bfloat16), "torch._scaled_mm")


def scaled_grouped_mm_works(device: torch.device) -> bool:
    """torch._scaled_grouped_mm (2-D activations, 3-D experts, rowwise scales) on `device`."""
    if not hasattr(torch, "_scaled_grouped_mm"):
        return False
    x = torch.ones(32, 32, device=device).to(FP8)
    w = torch.ones(2, 16, 32, device=device).to(FP8)
    offs = torch.tensor([16, 32], dtype=torch.int32, device=device)
    run = lambda: torch._scaled_grouped_mm(  # noqa: E731
        x, w.transpose(-2, -1), torch.ones(32, device=device), torch.ones(2, 16, device=device), offs=offs,
        out_dtype=torch.bfloat16,
    )  # fmt: skip
    return _probe(run, "torch._scaled_grouped_mm")


def enable_scaled_matmul(model: nn.Module, device: torch.device) -> dict[str, bool]:
    """Turn on the scaled fp8 matmuls the device runs (a CUDA GPU of 8.9+); returns which were turned on."""
    on = {"linears": False, "experts": False}
    if device.type == "cuda":
        on = {"linears": scaled_mm_works(device), "experts": scaled_grouped_mm_works(device)}
    for module in model.modules():
        if isinstance(module, Fp8Linear):
            module.scaled = on["linears"]
        elif isinstance(module, QuantizedExperts) and module.codec.method == "fp8":
            module.scaled = on["experts"]
    return on
