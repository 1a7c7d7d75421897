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


@dataclass
class Corrupted:
    """One example after the forward process: the clean sequence, the block to denoise and its noisy copy."""

    full: torch.Tensor  # (S,) prompt + EOS-padded response
    start: int  # offset of the chosen block in `full`
    noisy: torch.Tensor  # (C,) the block with a fraction t of its tokens replaced by random ones


def corrupt(example: Example, generator: torch.Generator, canvas: int, vocab: int, eos: int) -> Corrupted:
    """Draw the block, the rate t, the corrupted positions and their noise (in that order, on the CPU)."""
    response = pad_response(example.response, canvas, eos)
    full = torch.tensor(example.prompt + response)
    block = int(torch.randint(0, len(response) // canvas, (1,), generator=generator))
    start = len(example.prompt) + block * canvas
    return Corrupted(full, start, corrupt_block(full[None, start : start + canvas], generator, vocab)[0])


def example_loss(
    model: Any, example: Example, generator: torch.Generator, self_conditioning: bool, eos: int
) -> LossParts:
    """The loss of one example (the caller sums over a batch and calls backward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.config.get_text_config(decoder=True)
    item = corrupt(example, generator, base.config.canvas_length, text.vocab_size, eos)
    return group_loss(model, [item], [self_conditioning])


def corrupt_block(clean: torch.Tensor, generator: torch.Generator, vocab: int) -> torch.Tensor:
    """A noisy copy of (B, C) blocks: per row a rate t ~ U(eps, 1), each token replaced by a uniformly
    random one with probability t (the batched form of `corrupt`, for streams of same-shape batches)."""
    t = EPS + (1 - EPS) * torch.rand((clean.shape[0], 1), generator=generator)
    flipped = torch.rand(clean.shape, generator=generator) < t
    noise = torch.randint(0, vocab, clean.shape, generator=generator)
    return torch.where(flipped, noise, clean)


def group_loss(
    model: Any, items: list[Corrupted], self_conditioning: list[bool], encoder_weight: float = 1.0
) -> LossParts:
    """The summed per-example losses of examples that share their length and block offset, in one batch.
    `diffusion` and `encoder` are sums over the group too (divide by the batch size for means)."""
    full = torch.stack([item.full for item in items])
    noisy = torch.stack([item.noisy for item in items])
    coins = torch.tensor(self_conditioning, dtype=torch.bool)
    return batch_loss(model, full, noisy, items[0].start, coins, encoder_weight)


def batch_loss(
    model: Any,
    full: torch.Tensor,
    noisy: torch.Tensor,
    start: int,
    self_conditioning: torch.Tensor,
    encoder_weight: float = 1.0,
) -> LossParts:
    """`group_loss` on tensors: clean sequences (B, S), their noisy blocks (B, C) at `start`, and which rows
    use self-conditioning (B,). `total` weighs the encoder term by `encoder_weight` (the recipe's
    `encoder_loss_weight`, 1.0); `diffusion` and `encoder` are reported unweighted."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft injects in place
    config = model.config
    text = config.get_text_config(decoder=True)
    canvas, device = config.canvas_length, model.device
    full, noisy = full.to(device, non_blocking=True), noisy.to(device, non_blocking=True)
    batch, total = full.shape
    clean = full[:, start : start + canvas]

    # Encoder: the whole clean sequence once, into a cache without sliding truncation (masks restrict it).
    cache = DynamicCache()
    positions = torch.arange(total, device=device)[None].expand(batch, -1)
    encoded = model.model.encoder(input_ids=full, past_key_values=cache, position_ids=positions)
    encoder_logits = softcap(model.lm_head(encoded.last_hidden_state), model.final_logit_softcapping)
    encoder_loss = F.cross_entropy(encoder_logits[:, :-1].transpose(1, 2), full[:, 1:], reduction="none").mean(1)

    masks = decoder_masks(
        start, total, canvas, getattr(text, "sliding_window", None), device, text._attn_implementation, model.dtype
    )
    kwargs = dict(
        decoder_input_ids=noisy,
        past_key_values=cache,
        decoder_attention_mask=masks,
        decoder_position_ids=torch.arange(start, start + canvas, device=device)[None].expand(batch, -1),
    )
    sc_logits, sc_mask = None, None
    if bool(self_conditioning.any()):
        with torch.no_grad():
            sc_logits = model(**kwargs).logits.detach().to(model.dtype)
        sc_mask = self_conditioning.to(device)
    logits = model(**kwargs, self_conditioning_logits=sc_logits, self_conditioning_mask=sc_mask).logits
    diffusion_loss = F.cross_entropy(logits.float().transpose(1, 2), clean, reduction="none").mean(1)
    total_loss = (diffusion_loss + encoder_weight * encoder_loss).sum()
    return LossParts(total_loss, diffusion_loss.sum().item(), encoder_loss.sum().item(), batch * total)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = logits.float()
    return torch.tanh(logits / cap) * cap if cap else logits
