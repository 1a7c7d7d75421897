"""How a quantized base is loaded for QLoRA-style fine-tuning (bitsandbytes, GPU only). Knows transformers;
not the service.

DiffusionGemma's encoder and decoder share every layer's weights, and transformers leaves every tied
weight unquantized unless a skip list is given, so a plain `BitsAndBytesConfig(load_in_4bit=True)` keeps
the shared layers in bf16 (measured: only the vision tower and the self-conditioning projections became
4-bit). Naming the skip list explicitly (the lm_head, tied to the embeddings) quantizes the shared layers.
The experts' 3D tensors are not nn.Linear and stay in the compute dtype either way.
"""

from __future__ import annotations

from typing import Any

import torch

SKIP = ["lm_head"]  # tied to the input embeddings, which bitsandbytes does not quantize


def quantization_config(quantization: str) -> Any:
    """`8bit` | `4bit` -> a BitsAndBytesConfig; `none` -> None."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    bits: dict[str, Any] = {
        "8bit": {"load_in_8bit": True},
        "4bit": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16},
    }[quantization]
    return BitsAndBytesConfig(**bits, llm_int8_skip_modules=SKIP)
