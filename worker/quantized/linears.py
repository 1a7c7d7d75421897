"""Quantized linear layers from stored tensors: bitsandbytes `Linear4bit` (nf4) and `Linear8bitLt` (int8),
which peft knows how to put LoRA adapters on, and our `Fp8Linear` (e4m3 weights, one scale per row) through
`torch._scaled_mm` where the device has it, dequantize-then-matmul where it does not. Knows modules; not
files or the model's layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker.quantized.codecs import CODECS, FP8, FP8_MAX, NF4_BLOCK, bnb


def nf4_linear(in_features: int, out_features: int, stored: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """A frozen `Linear4bit` over stored nf4 blocks ({"": packed uint8, "_absmax": fp32})."""
    bnb()  # quiet import of the backends
    import bitsandbytes as bnb_pkg

    packed = stored[""]
    module = bnb_pkg.nn.Linear4bit(
        in_features, out_features, bias=False, compute_dtype=dtype, compress_statistics=False,
        quant_type="nf4", device="meta",
    )  # fmt: skip
    state = CODECS["nf4"].state(stored["_absmax"], (out_features, in_features), dtype)  # type: ignore[attr-defined]
    module.weight = bnb_pkg.nn.Params4bit(
        packed.reshape(-1, 1), requires_grad=False, quant_state=state, blocksize=NF4_BLOCK,
        compress_statistics=False, quant_type="nf4", module=module, bnb_quantized=True,
    )  # fmt: skip
    module.quant_state = state
    # Not bitsandbytes' CPU repacking: it rewrites the weight in place on the first eval pass (a bf16 gemv
    # layout, inside inference mode), which a later training pass on the same weight cannot use.
    module.support_avx512bf16_for_cpu = False
    return module


def int8_linear(in_features: int, out_features: int, stored: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """A frozen `Linear8bitLt` over int8 rows ({"": int8 (N, K), "_scale": fp32 (N,)}), no outlier split."""
    bnb()  # quiet import of the backends
    import bitsandbytes as bnb_pkg

    module = _int8_class()(in_features, out_features, bias=False, has_fp16_weights=False, threshold=0.0, device="meta")
    data = stored[""]
    module.weight = bnb_pkg.nn.Int8Params(
        data, requires_grad=False, has_fp16_weights=False, CB=data, SCB=stored["_scale"] * 127.0
    )
    return module


def _int8_class() -> type[nn.Module]:
    """Linear8bitLt fed fp16 activations: bitsandbytes quantizes activations from fp16 and warns on each
    call with another dtype, so the cast is ours (same numbers) and the output goes back to x's dtype."""
    import bitsandbytes as bnb_pkg

    class Int8Linear(bnb_pkg.nn.Linear8bitLt):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x.to(torch.float16)).to(x.dtype)

    return Int8Linear


class Fp8Linear(nn.Module):
    """y = x W^T with W stored as e4m3 (N, K) and a fp32 scale per row. Activations are scaled per row to
    e4m3 for `torch._scaled_mm` when `scaled` is on; otherwise W is dequantized to x's dtype."""

    def __init__(self, in_features: int, out_features: int, stored: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", stored[""])
        self.register_buffer("weight_scale", stored["_scale"])
        self.scaled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scaled:
            return self._scaled(x)
        w = self.weight.to(x.dtype) * self.weight_scale[:, None].to(x.dtype)
        return nn.functional.linear(x, w)

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (M, K)
        x_scale = (rows.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)  # (M, 1)
        x8 = (rows.float() / x_scale).to(FP8)
        out = torch._scaled_mm(
            x8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale[None].float(), out_dtype=torch.bfloat16
        )
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scaled={self.scaled}"


BUILDERS: dict[str, Any] = {
    "nf4": nf4_linear,
    "int8": int8_linear,
    "fp8": lambda i, o, stored, dtype: Fp8Linear(i, o, stored),
}


def quantized_linear(
    method: str, in_features: int, out_features: int, stored: dict[str, torch.Tensor], dtype: torch.dtype
) -> nn.Module:
    return BUILDERS[method](in_features, out_features, stored, dtype)
