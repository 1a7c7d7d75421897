"""The model side of the engine: batched encoder passes into the static KV slots, batched decoder passes
over rows with different prefix lengths, logits and self-conditioning embeddings for tiles of rows.

It uses transformers' DiffusionGemma modules but not `generate()`; it knows nothing of requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from worker.engine.kv import DecoderKV, EncoderKV, install


class Idle:
    """The adapter of a row that a pass computes but whose output nobody reads (an idle slot)."""


IDLE = Idle()
SUPPORTED_ATTENTION = ("sdpa", "eager")  # the decoder masks below are right for these only


class UnsupportedModel(ValueError):
    """A model the engine cannot run correctly (for example an attention implementation it has no masks for)."""


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
        self.window: int = getattr(self.text_config, "sliding_window", None) or 2**31 - 1
        install(self.decoder)
        self.adapters: Any = None  # the PeftModel wrapping `model` once an adapter is loaded
        self.active_adapter: str | None = None

    def check_adapter(self, name: str | None) -> None:
        """Raise KeyError unless `name` is None (the base weights) or a loaded adapter."""
        if name is not None and (self.adapters is None or name not in self.adapters.peft_config):
            raise KeyError(f"adapter {name!r} is not loaded")

    @contextmanager
    def adapters_per_row(self, names: list[str | Idle | None]) -> Iterator[None]:
        """Passes inside run row b with adapter names[b] (None: the base weights; IDLE: a row whose output
        is dropped, any will do). One adapter among the rows: it is simply made active. Several: the
        adapted layers apply each adapter's delta to its own rows (peft's mixed-adapter batches: the
        base matmul once for all rows, a LoRA matmul per adapter on its rows' inputs)."""
        used = {n for n in names if n is not IDLE}
        if len(used) == 1:
            self.use_adapter(used.pop())  # type: ignore[arg-type]
            yield
            return
        for name in used:
            self.check_adapter(name)  # type: ignore[arg-type]
        self.adapters.base_model.enable_adapter_layers()
        self.active_adapter = "?"  # the layers' own active adapter is no longer known to be the base's
        per_row = [n if isinstance(n, str) else "__base__" for n in names]
        with self.adapters.base_model._enable_peft_forward_hooks(adapter_names=per_row):
            yield

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

    def masks(self, masks: dict[bool, torch.Tensor | None]) -> dict[str, Any]:
        """Boolean masks by `sliding` -> what the attention implementation takes, by layer type: SDPA takes
        them as they are, eager attention as additive float masks."""
        out: dict[str, Any] = {}
        for layer_type, sliding in (("full_attention", False), ("sliding_attention", True)):
            keep = masks[sliding]
            if keep is not None and self.attn_implementation != "sdpa":
                keep = torch.zeros(keep.shape, dtype=self.dtype, device=self.device).masked_fill(
                    ~keep, torch.finfo(self.dtype).min
                )
            out[layer_type] = keep
        return out

    @torch.inference_mode()
    def encode(self, cache: EncoderKV, ids: torch.Tensor, masks: dict[str, Any], positions: torch.Tensor) -> None:
        """One encoder pass over rows' new tokens: ids (B, n), positions (B, n); their K/V land in `cache`."""
        self.encoder(input_ids=ids, attention_mask=masks, past_key_values=cache, position_ids=positions)

    @torch.inference_mode()
    def decode(
        self,
        canvas: torch.Tensor,
        soft: torch.Tensor,
        kv: DecoderKV,
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
