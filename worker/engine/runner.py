"""The model side of the engine: encoder passes into per-row caches, batched decoder passes over rows
with different cache lengths, logits and self-conditioning embeddings for tiles of rows.

It uses transformers' DiffusionGemma modules but not `generate()`; it knows nothing of requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass
class _LayerKV:
    keys: torch.Tensor  # (B, H_kv, L, D)
    values: torch.Tensor


class GatheredKV:
    """Several rows' encoder caches, left-padded into one batch, read-only (the decoder never writes)."""

    is_compileable = False

    def __init__(self, layers: list[_LayerKV]) -> None:
        self.layers = layers


SUPPORTED_ATTENTION = ("sdpa", "eager")  # the decoder masks below are right for these only


class UnsupportedModel(ValueError):
    """A model the engine cannot run correctly (for example an attention implementation it has no masks for)."""


def to_device(values: list[int], device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A small host list on the device without blocking the host: a pinned buffer, copied asynchronously."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class ModelRunner:
    """Runs DiffusionGemma's encoder and decoder for the engine."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.encoder = model.model.encoder
        self.decoder = model.model.decoder
        self.config = model.config
        self.text_config = model.config.get_text_config(decoder=True)
        self.canvas_length: int = model.config.canvas_length
        self.vocab_size: int = self.text_config.vocab_size
        self.hidden_size: int = self.text_config.hidden_size
        self.layer_types: list[str] = list(self.text_config.layer_types)
        self.softcap: float | None = model.final_logit_softcapping
        self.device = next(model.parameters()).device
        self.dtype = self.decoder.embed_tokens.weight.dtype
        self.attn_implementation = self.text_config._attn_implementation
        if self.attn_implementation not in SUPPORTED_ATTENTION:
            raise UnsupportedModel(
                f"attention implementation {self.attn_implementation!r}: the engine builds decoder masks for "
                f"{' and '.join(SUPPORTED_ATTENTION)} only; load the model with attn_implementation='sdpa'"
            )
        self.adapters: Any = None  # the PeftModel wrapping `model` once an adapter is loaded
        self.active_adapter: str | None = None

    def use_adapter(self, name: str | None) -> None:
        """Make the next passes use adapter `name` (None: the base weights alone)."""
        if name == self.active_adapter or self.adapters is None:
            if name is not None and self.adapters is None:
                raise KeyError(f"adapter {name!r} is not loaded")
            return
        if name is None:
            self.adapters.base_model.disable_adapter_layers()
        else:
            self.adapters.base_model.enable_adapter_layers()
            self.adapters.base_model.set_adapter(name)
        self.active_adapter = name

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.text_config)

    @torch.inference_mode()
    def encode(self, cache: DynamicCache, ids: torch.Tensor, start: int) -> None:
        """Append `ids` (1, n) at positions start.. to `cache`, with causal masks as generate() builds them."""
        n = ids.shape[1]
        positions = torch.arange(start, start + n, dtype=torch.int32, device=self.device)[None]
        dummy = torch.empty((1, n, 0), dtype=self.dtype, device=self.device)
        attention_mask = torch.ones((1, start + n), dtype=torch.bool, device=self.device)
        masks = self.encoder.create_masks_for_generate(
            config=self.config,
            inputs_embeds=dummy,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=positions,
        )
        self.encoder(input_ids=ids, attention_mask=masks, past_key_values=cache, position_ids=positions)

    def gather(self, caches: list[DynamicCache]) -> tuple[GatheredKV | DynamicCache, dict[str, Any]]:
        """Rows' caches as one left-padded batch, and the decoder masks per layer type (None: no padding)."""
        if len(caches) == 1:
            return caches[0], dict.fromkeys(self.layer_types)
        layers, masks = [], {}
        for index, layer_type in enumerate(self.layer_types):
            keys = [c.layers[index].keys for c in caches]
            values = [c.layers[index].values for c in caches]
            lengths = [k.shape[-2] for k in keys]
            longest = max(lengths)
            layers.append(_LayerKV(_left_pad(keys, longest), _left_pad(values, longest)))
            if layer_type not in masks:
                masks[layer_type] = self._decoder_mask(lengths, longest)
        return GatheredKV(layers), masks

    def _decoder_mask(self, lengths: list[int], longest: int) -> torch.Tensor | None:
        if all(n == longest for n in lengths):
            return None
        C = self.canvas_length
        key_index = torch.arange(longest + C, device=self.device)  # (L + C,)
        starts = torch.tensor([longest - n for n in lengths], device=self.device)[:, None]  # (B, 1)
        keep = (key_index[None] >= starts)[:, None, None, :].expand(-1, 1, C, -1)  # (B, 1, C, L + C)
        if self.attn_implementation == "sdpa":
            return keep
        return torch.zeros(keep.shape, dtype=self.dtype, device=self.device).masked_fill(
            ~keep, torch.finfo(self.dtype).min
        )

    @torch.inference_mode()
    def decode(
        self,
        canvas: torch.Tensor,
        soft: torch.Tensor,
        kv: GatheredKV | DynamicCache,
        masks: dict[str, Any],
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """One bidirectional decoder pass. canvas (B, C), soft (B, C, H), positions (B, C) -> hidden (B, C, H)."""
        embeds = self.decoder.self_conditioning(self.decoder.embed_tokens(canvas), soft)
        rope = {t: self.decoder.rotary_emb(embeds, positions, t) for t in self.decoder.unique_layer_types}
        hidden = embeds
        for i, layer in enumerate(self.decoder.layers[: self.text_config.num_hidden_layers]):
            hidden = layer(
                hidden,
                position_embeddings=rope[self.layer_types[i]],
                attention_mask=masks[self.layer_types[i]],
                position_ids=positions,
                past_key_values=kv,
            )
        return self.decoder.norm(hidden)

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The lm_head's logits in the weights' dtype, not soft-capped (the fast sampler's input). (B, C, V)"""
        return self.model.lm_head(hidden)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Soft-capped fp32 logits, with the model forward's kernels (in place). (B, C, H) -> (B, C, V)."""
        logits = self.head(hidden).to(torch.float32)
        if self.softcap is not None:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    @torch.inference_mode()
    def soft_embeddings(self, processed: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        """Self-conditioning input for the next step: softmax(processed) @ E * sqrt(H), as the decoder
        computes it from logits cast to the weights' dtype. With fp32 weights that softmax is `probs`
        (the sampler's, same kernel), so it is not computed twice. (B, C, V) -> (B, C, H)."""
        weight = self.decoder.embed_tokens.weight
        if probs is None or weight.dtype != torch.float32:
            probs = processed.to(weight.dtype).softmax(dim=-1, dtype=torch.float32)
        return torch.matmul(probs.to(weight.dtype), weight) * self.decoder.embed_tokens.embed_scale.to(weight.dtype)


def _left_pad(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """(1, H, L_i, D) tensors -> (B, H, length, D), each right-aligned (left padding)."""
    if all(t.shape[-2] == length for t in tensors):
        return torch.cat(tensors)  # nothing to pad: one copy
    first = tensors[0]
    out = first.new_zeros((len(tensors), first.shape[1], length, first.shape[3]))
    for row, t in enumerate(tensors):
        out[row, :, length - t.shape[-2] :] = t[0]
    return out
