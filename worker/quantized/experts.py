"""DiffusionGemma's fused experts with quantized weights, a drop-in for `DiffusionGemmaTextExperts`: same
call (hidden (T, H), top_k_index (T, K), top_k_weights (T, K)) -> (T, H), same arithmetic as transformers'
grouped_mm experts path.

Only the experts a pass routes to are dequantized, a chunk of them at a time, into a scratch buffer that
is bounded by the chunk size (reused per thread on CUDA), and the chunk's tokens go through one grouped
matmul. fp8 on a GPU with scaled grouped matmuls skips dequantizing: the e4m3 weights feed
`torch._scaled_grouped_mm` with rowwise scales. Training (QLoRA) recomputes each chunk in the backward
pass instead of keeping dequantized weights alive. Knows routing results; not the router.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worker.quantized.codecs import FP8, FP8_MAX, Codec, codec

log = logging.getLogger(__name__)
CHUNK_EXPERTS = 16  # experts dequantized at once: 16 of the 26B model's are 190 MB of bf16 scratch
_scratch = threading.local()


@dataclass
class Routes:
    """Token-expert pairs sorted by expert. `counts` (host) drives the chunks: reading it is the pass's
    one host sync per layer (the same one transformers' eager experts make)."""

    order: torch.Tensor  # (A,) pair indices sorted by expert, A = T * K
    tokens: torch.Tensor  # (A,) the token of each sorted pair
    counts: list[int]  # pairs per expert, length E

    def chunks(self, size: int) -> Iterator[tuple[list[int], int, int, list[int]]]:
        """(expert ids, first row, end row, rows per expert) of each run of `size` routed experts."""
        hit = [e for e, n in enumerate(self.counts) if n]
        starts = [0]
        for n in self.counts:
            starts.append(starts[-1] + n)
        for i in range(0, len(hit), size):
            ids = hit[i : i + size]
            yield ids, starts[ids[0]], starts[ids[-1] + 1], [self.counts[e] for e in ids]


def route(top_k_index: torch.Tensor, num_experts: int) -> Routes:
    experts = top_k_index.reshape(-1)  # (A,)
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=num_experts).tolist()
    return Routes(order, order // top_k_index.shape[-1], counts)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """x (rows, K) in groups of `sizes` rows, weight (n, N, K) -> (rows, N): group i times weight[i]^T."""
    if _grouped_mm_works(x):
        offsets = torch.tensor(sizes, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(x.device, non_blocking=True)
        return torch.nn.functional.grouped_mm(x, weight.transpose(-2, -1), offs=offsets)
    parts = torch.split(x, sizes)
    return torch.cat([torch.nn.functional.linear(p, weight[i]) for i, p in enumerate(parts)])


def _grouped_mm_works(x: torch.Tensor) -> bool:
    if not hasattr(torch.nn.functional, "grouped_mm"):
        return False
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return x.device.type == "cpu"


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """This thread's reusable buffer for dequantized weights (CUDA only: elsewhere bitsandbytes allocates)."""
    if device.type != "cuda":
        return None
    buffers: dict[Any, torch.Tensor] = _scratch.__dict__.setdefault("buffers", {})
    key = (shape, dtype, device)
    if key not in buffers:
        buffers[key] = torch.empty(shape, dtype=dtype, device=device)
    return buffers[key]


class QuantizedExperts(nn.Module):
    """Experts whose gate_up (E, 2I, H) and down (E, H, I) projections are stored by a codec (buffers named
    `gate_up_proj`, `gate_up_proj_absmax`/`_scale`, ...). Computes in `dtype`."""

    def __init__(self, method: str, num_experts: int, hidden: int, intermediate: int, act_fn: Callable[..., Any],
                 dtype: torch.dtype, chunk_experts: int = CHUNK_EXPERTS) -> None:  # fmt: skip
        super().__init__()
        self.codec: Codec = codec(method)
        self.num_experts, self.hidden_dim, self.intermediate_dim = num_experts, hidden, intermediate
        self.act_fn, self.dtype, self.chunk_experts = act_fn, dtype, chunk_experts
        self.shapes = {"gate_up_proj": (2 * intermediate, hidden), "down_proj": (hidden, intermediate)}
        self.scaled = False  # fp8 through torch._scaled_grouped_mm (enable_scaled_matmul decides)
        for name, shape in self.shapes.items():
            for suffix, spec in self.codec.specs((num_experts, *shape)).items():
                self.register_buffer(name + suffix, torch.empty(spec.shape, dtype=spec.dtype, device="meta"))

    def stored(self, name: str) -> dict[str, torch.Tensor]:
        return {suffix: getattr(self, name + suffix) for suffix in ("", *self.codec.suffixes)}

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (hidden.requires_grad or top_k_weights.requires_grad):
            return _TrainableExperts.apply(hidden, top_k_index, top_k_weights, self)
        return self.mix(hidden, top_k_index, top_k_weights)

    def mix(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """(T, H) -> (T, H): each token's routed experts, weighted and summed (fp32 sum, as transformers)."""
        routes = route(top_k_index, self.num_experts)
        xs = hidden[routes.tokens]  # (A, H)
        ys = self.scaled_mlp(xs, routes) if self.scaled else torch.empty_like(xs)
        if not self.scaled:
            for ids, start, end, sizes in routes.chunks(self.chunk_experts):
                gate_up, down = self.weights(ids, xs.device)
                ys[start:end] = self.mlp(xs[start:end], gate_up, down, sizes)
        weighted = ys * top_k_weights.reshape(-1)[routes.order, None]  # (A, H), fp32 like the router's weights
        out = torch.empty_like(weighted)
        out[routes.order] = weighted
        return out.view(*top_k_index.shape, -1).sum(dim=1).to(hidden.dtype)

    def weights(self, ids: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized (n, 2I, H) and (n, H, I) weights of experts `ids`."""
        index = torch.tensor(ids, device=device)
        out = []
        for name, shape in self.shapes.items():
            buffer = scratch((self.chunk_experts, *shape), self.dtype, device)
            out.append(self.codec.dequantize(self.stored(name), index, shape, self.dtype, buffer))
        return out[0], out[1]

    def mlp(self, x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Rows of x grouped by expert (sizes) -> each expert's gated MLP. (rows, H) -> (rows, H)."""
        gate, up = grouped_linear(x.to(gate_up.dtype), gate_up, sizes).chunk(2, dim=-1)  # (rows, I) each
        return grouped_linear(self.act_fn(gate) * up, down, sizes)

    def scaled_mlp(self, xs: torch.Tensor, routes: Routes) -> torch.Tensor:
        """fp8 weights straight into scaled grouped matmuls (all experts, empty groups for the unrouted)."""
        offsets = torch.tensor(routes.counts, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(xs.device)
        gate, up = self._scaled(xs, "gate_up_proj", offsets).chunk(2, dim=-1)
        return self._scaled(self.act_fn(gate) * up, "down_proj", offsets)

    def _scaled(self, x: torch.Tensor, name: str, offsets: torch.Tensor) -> torch.Tensor:
        data, scale = getattr(self, name), getattr(self, name + "_scale")  # (E, N, K) e4m3, (E, N)
        x_scale = (x.abs().amax(dim=-1).float() / FP8_MAX).clamp(min=1e-12)  # (rows,)
        x8 = (x.float() / x_scale[:, None]).to(FP8)
        return torch._scaled_grouped_mm(
            x8, data.transpose(-2, -1), x_scale, scale, offs=offsets, out_dtype=torch.bfloat16
        ).to(x.dtype)


class _TrainableExperts(torch.autograd.Function):
    """Gradients for hidden states and routing weights through frozen quantized experts. The backward
    pass re-dequantizes chunk by chunk and differentiates each chunk locally, so no dequantized weight
    outlives its chunk (the memory a QLoRA step needs stays that of the quantized weights)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                module: QuantizedExperts) -> torch.Tensor:  # fmt: skip
        ctx.module = module
        ctx.save_for_backward(hidden, top_k_index, top_k_weights)
        return module.mix(hidden, top_k_index, top_k_weights)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, None]:
        hidden, top_k_index, top_k_weights = ctx.saved_tensors
        module: QuantizedExperts = ctx.module
        routes = route(top_k_index, module.num_experts)
        xs, grads = hidden[routes.tokens], grad_out[routes.tokens].float()  # (A, H) each
        ws = top_k_weights.reshape(-1)[routes.order]  # (A,)
        grad_xs, grad_ws = torch.zeros_like(xs), torch.zeros_like(ws)
        for ids, start, end, sizes in routes.chunks(module.chunk_experts):
            gate_up, down = module.weights(ids, xs.device)
            with torch.enable_grad():
                x = xs[start:end].detach().requires_grad_()
                w = ws[start:end].detach().requires_grad_()
                y = module.mlp(x, gate_up, down, sizes) * w[:, None]
                gx, gw = torch.autograd.grad(y, (x, w), grads[start:end].to(y.dtype))
            grad_xs[start:end], grad_ws[start:end] = gx, gw
        grad_hidden = torch.zeros_like(hidden).index_add_(0, routes.tokens, grad_xs)
        grad_weights = torch.empty_like(ws)
        grad_weights[routes.order] = grad_ws
        return grad_hidden, None, grad_weights.view_as(top_k_weights), None
