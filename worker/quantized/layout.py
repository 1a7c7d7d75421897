"""Which parts of a DiffusionGemma are quantized and where they sit: every nn.Linear except the router's
projection and the lm_head (tied to the embeddings) whose input width is a multiple of 64 (all of the
released model's; tiny test towers keep theirs), and every fused experts module, when each of its weights has
at least `min_weights` weights (MIN_WEIGHTS unless the checkpoint says otherwise): a smaller tensor stays in
the base dtype, where it costs a few KiB and its 4-bit error would cost most. The encoder and decoder share
each layer's weights (not its modules), so a target lists every path its weights sit at; the router,
norms, embeddings and lm_head stay in the base dtype. Also builds the quantized module of a target from its
stored tensors. Knows the model's modules; not files.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from worker.quantized.codecs import Codec, codec
from worker.quantized.experts import QuantizedExperts
from worker.quantized.linears import quantized_linear

SKIP = ("router.proj", "lm_head")  # routing decisions and the tied embeddings stay exact
IN_MULTIPLE = 64  # bitsandbytes' CPU kernels cut 4-bit blocks per row: rows of whole blocks agree everywhere
EXPERT_PROJECTIONS = ("gate_up_proj", "down_proj")
# Tensors under 16,384 weights (32 KiB in bf16) stay in the base dtype. None of the released 26B-A4B model's
# is that small (its smallest quantized tensor has 589,824), so the rule costs it no byte; in small models it
# keeps the narrow key/value projections (one KV head: 32 x 192 in the demo model), which every query head
# reads and which carry about half of nf4's KL there (docs/benchmarks.md). Small, shared attention tensors
# get more bits in llama.cpp's k-quant mixes for the same reason.
MIN_WEIGHTS = 16_384


@dataclass
class Target:
    """One module to quantize: its paths (shared modules sit at several) and its weights' shapes."""

    paths: list[str]
    kind: str  # "linear" | "experts"
    shapes: dict[str, tuple[int, ...]]  # weight name -> (N, K) or (E, N, K)
    has_bias: bool = False

    def keys(self, method_codec: Codec) -> dict[str, tuple[str, str]]:
        """Every checkpoint key that may hold one of its tensors -> (path, local name)."""
        out = {}
        for path in self.paths:
            for weight in self.shapes:
                for suffix in ("", *method_codec.suffixes):
                    out[f"{path}.{weight}{suffix}"] = (path, weight + suffix)
            if self.has_bias:
                out[f"{path}.bias"] = (path, "bias")
        return out

    def local_names(self, method_codec: Codec) -> set[str]:
        names = {w + s for w in self.shapes for s in ("", *method_codec.suffixes)}
        return names | ({"bias"} if self.has_bias else set())


def is_experts(module: nn.Module) -> bool:
    """transformers' fused experts (not ours: a quantized model has no targets left)."""
    return type(module).__name__ == "DiffusionGemmaTextExperts"


def targets(model: nn.Module, min_weights: int = MIN_WEIGHTS) -> list[Target]:
    """The modules to quantize, grouped by shared weight (one target per encoder/decoder pair); a module
    with a weight of fewer than `min_weights` weights is not one."""
    groups: dict[int, Target] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if type(module) is nn.Linear and not path.endswith(SKIP) and module.in_features % IN_MULTIPLE == 0:
            key, shapes = id(module.weight), {"weight": tuple(module.weight.shape)}
            kind, bias = "linear", module.bias is not None
        elif is_experts(module):
            key, kind, bias = id(module.gate_up_proj), "experts", False
            shapes = {p: tuple(getattr(module, p).shape) for p in EXPERT_PROJECTIONS}
        else:
            continue
        if min(torch.Size(shape).numel() for shape in shapes.values()) < min_weights:
            continue
        groups.setdefault(key, Target([], kind, shapes, bias)).paths.append(path)
    return list(groups.values())


def aliases(model: nn.Module) -> dict[str, list[str]]:
    """Each parameter's or buffer's name -> every name it is known by (tied weights share one tensor)."""
    by_tensor: dict[int, list[str]] = defaultdict(list)
    for name, tensor in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        by_tensor[id(tensor)].append(name)
    return {name: names for names in by_tensor.values() for name in names}


def sibling(module: nn.Module) -> nn.Module:
    """Another module object over the same tensors, as transformers ties encoder and decoder: modules
    apart, weights shared (peft wraps each path's module on its own; lora.py reties the adapters)."""
    twin = copy.copy(module)
    twin._parameters, twin._buffers = dict(module._parameters), dict(module._buffers)
    twin._modules = dict(module._modules)
    return twin


def place(model: nn.Module, target: Target, module: nn.Module) -> None:
    """`module` at the target's first path, siblings sharing its tensors at the others."""
    for index, path in enumerate(target.paths):
        set_module(model, path, module if index == 0 else sibling(module))


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def set_tensor(model: nn.Module, names: list[str], tensor: torch.Tensor) -> None:
    """Put `tensor` at each of `names` (aliases of one tied tensor): one frozen parameter object where a
    parameter stands, else a buffer."""
    parameter = None
    for name in names:
        owner_path, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        if attr in owner._parameters:
            parameter = parameter if parameter is not None else nn.Parameter(tensor, requires_grad=False)
            owner._parameters[attr] = parameter
        else:
            owner._buffers[attr] = tensor


def build(target: Target, method: str, stored: dict[str, torch.Tensor], config: Any, dtype: torch.dtype) -> nn.Module:
    """The quantized module of `target` from its stored tensors (names local to the module)."""
    if target.kind == "linear":
        out_features, in_features = target.shapes["weight"]
        weight = {s: stored["weight" + s] for s in ("", *codec(method).suffixes)}
        module = quantized_linear(method, in_features, out_features, weight, dtype)
        if target.has_bias:
            module.bias = nn.Parameter(stored["bias"].to(dtype), requires_grad=False)
        return module
    experts, two_i, hidden = target.shapes["gate_up_proj"]
    module = QuantizedExperts(method, experts, hidden, two_i // 2, ACT2FN[config.hidden_activation], dtype)
    for name, tensor in stored.items():
        module._buffers[name] = tensor
    return module


def quantize_model(model: nn.Module, method: str, min_weights: int = MIN_WEIGHTS) -> nn.Module:
    """Quantize `model` in place (for tests and benchmarks; checkpoints go through quantize_checkpoint)."""
    text_config = model.config.get_text_config(decoder=True)
    dtype = model.model.decoder.embed_tokens.weight.dtype
    for target in targets(model, min_weights):
        module = model.get_submodule(target.paths[0])
        stored = {}
        for weight in target.shapes:
            for suffix, tensor in codec(method).quantize(getattr(module, weight)).items():
                stored[weight + suffix] = tensor
        if target.has_bias:
            stored["bias"] = module.bias.detach()
        place(model, target, build(target, method, stored, text_config, dtype).train(module.training))
    model.canvas_quantization = method
    return model
