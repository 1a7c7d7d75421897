"""The block-diffusion training objective of the released model's recipe (reference digest section 4).

For one example: the response is padded with EOS to whole canvases; one rate t ~ U(eps, 1) corrupts each
response token of one uniformly chosen canvas-sized block into a uniformly random token with probability
t; the decoder denoises that block reading a cache of the clean prompt and the earlier blocks; the loss is
the cross-entropy over every token of the block (corrupted or not) plus the encoder's causal next-token
loss over the whole clean sequence. Self-conditioning takes two passes: the first without gradients and
without self-conditioning; its logits feed the second for a coin-flipped half of the examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

EPS = 1e-3


@dataclass
class Example:
    """Token ids of one training example: the prompt and the supervised response (without EOS fill)."""

    prompt: list[int]
    response: list[int]


@dataclass
class LossParts:
    total: torch.Tensor
    diffusion: float
    encoder: float
    tokens: int  # tokens the encoder read (for tokens/s)


def pad_response(response: list[int], canvas: int, eos: int) -> list[int]:
    """The response followed by EOS up to a whole number of canvases (at least one EOS)."""
    blocks = max(1, -(-(len(response) + 1) // canvas))
    return response + [eos] * (blocks * canvas - len(response))


def decoder_masks(
    context: int, total: int, canvas: int, window: int | None, device: torch.device, attn_impl: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """4D masks (1, 1, C, total + C) letting the block see the cache's first `context` tokens (the last
    `window - 1` of them in sliding layers, as the inference cache keeps) and itself, nothing later."""
    keys = torch.arange(total + canvas, device=device)
    is_canvas = keys >= total
    full = (keys < context) | is_canvas
    masks = {"full_attention": full}
    if window:
        masks["sliding_attention"] = ((keys < context) & (keys >= context - (window - 1))) | is_canvas
    out = {}
    for name, keep in masks.items():
        keep = keep[None, None, None, :].expand(1, 1, canvas, -1)
        if attn_impl == "eager":
            keep = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)
        out[name] = keep
    return out


def example_loss(
    model: Any, example: Example, generator: torch.Generator, self_conditioning: bool, eos: int
) -> LossParts:
    """The loss of one example (the caller sums over a batch and calls backward)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft injects in place
    config = model.config
    text = config.get_text_config(decoder=True)
    canvas, vocab, device = config.canvas_length, text.vocab_size, model.device
    response = pad_response(example.response, canvas, eos)
    full = torch.tensor([example.prompt + response], device=device)  # (1, S)
    total, prompt_len = full.shape[1], len(example.prompt)
    block = int(torch.randint(0, len(response) // canvas, (1,), generator=generator))
    start = prompt_len + block * canvas
    clean = full[:, start : start + canvas]  # (1, C)
    t = EPS + (1 - EPS) * torch.rand((), generator=generator)
    corrupt = torch.rand(clean.shape, generator=generator) < t
    noise = torch.randint(0, vocab, clean.shape, generator=generator)
    noisy = torch.where(corrupt.to(device), noise.to(device), clean)

    # Encoder: the whole clean sequence once, into a cache without sliding truncation (masks restrict it).
    cache = DynamicCache()
    positions = torch.arange(total, device=device)[None]
    encoded = model.model.encoder(input_ids=full, past_key_values=cache, position_ids=positions)
    encoder_logits = softcap(model.lm_head(encoded.last_hidden_state), model.final_logit_softcapping)
    encoder_loss = F.cross_entropy(encoder_logits[0, :-1].float(), full[0, 1:])

    masks = decoder_masks(
        start, total, canvas, getattr(text, "sliding_window", None), device, text._attn_implementation, model.dtype
    )
    decoder_positions = torch.arange(start, start + canvas, device=device)[None]
    kwargs = dict(
        decoder_input_ids=noisy,
        past_key_values=cache,
        decoder_attention_mask=masks,
        decoder_position_ids=decoder_positions,
    )
    sc_logits, sc_mask = None, None
    if self_conditioning:
        with torch.no_grad():
            first = model(**kwargs).logits.detach()
        sc_logits = first.to(model.dtype)
        sc_mask = torch.ones(1, dtype=torch.bool, device=device)
    logits = model(**kwargs, self_conditioning_logits=sc_logits, self_conditioning_mask=sc_mask).logits
    diffusion_loss = F.cross_entropy(logits[0].float(), clean[0])
    return LossParts(diffusion_loss + encoder_loss, diffusion_loss.item(), encoder_loss.item(), total)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = logits.float()
    return torch.tanh(logits / cap) * cap if cap else logits
