"""Random-weight DiffusionGemma models for benchmarks: the released 26B-A4B architecture, a small CPU
one (the same as ../shared/bench/hf_baseline.py --small), and a tiny one. Needs only torch and
transformers, so it runs on a bare GPU machine.

Parameters are built on the meta device and materialised once each: the encoder and decoder share
their weights, and building on the device directly would allocate both copies before tying them.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig

ARCHS: dict[str, dict[str, Any]] = {
    "26b": dict(
        vocab_size=262144,
        hidden_size=2816,
        intermediate_size=2112,
        num_hidden_layers=30,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        num_global_key_value_heads=2,
        global_head_dim=512,
        sliding_window=1024,
        max_position_embeddings=131072,
        num_experts=128,
        top_k_experts=8,
        moe_intermediate_size=704,
        final_logit_softcapping=30.0,
    ),
    "small": dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_global_key_value_heads=2,
        global_head_dim=64,
        sliding_window=128,
        max_position_embeddings=4096,
        num_experts=8,
        top_k_experts=2,
        moe_intermediate_size=128,
    ),
}
CANVAS = {"26b": 256, "small": 64}


def build(arch: str, device: str, dtype: torch.dtype, seed: int = 0, **overrides: Any) -> Any:
    """A random-weight model of `arch` on `device`, weights shared between encoder and decoder;
    `overrides` change fields of its text config (e.g. num_hidden_layers=1 where only the head matters)."""
    torch.manual_seed(seed)
    config = DiffusionGemmaConfig(
        text_config=DiffusionGemmaTextConfig(**{**ARCHS[arch], **overrides}),
        vision_config=None,
        canvas_length=CANVAS[arch],
    )
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config).eval()
    made: dict[int, torch.nn.Parameter] = {}
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                if id(param) not in made:
                    tensor = torch.empty(param.shape, dtype=dtype, device=device)
                    tensor.normal_(0.0, 0.02) if param.dim() >= 2 else tensor.fill_(1.0)
                    made[id(param)] = torch.nn.Parameter(tensor, requires_grad=False)
                module._parameters[name] = made[id(param)]
            for name, buf in list(module._buffers.items()):
                if buf is not None:  # rotary frequencies and scales only steer the numbers, not the cost
                    module._buffers[name] = torch.ones(buf.shape, dtype=buf.dtype, device=device)
    model.generation_config.eos_token_id = None  # random weights: every canvas is generated in full
    return model
