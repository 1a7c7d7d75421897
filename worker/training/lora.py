"""LoRA on DiffusionGemma with peft, keeping the one-backbone semantics: the decoder's attention and dense
MLP projections are adapted, and the encoder is given the very same adapted modules (reference digest
4.6: a regex over both stacks would create separate, untied adapters; the vision tower's clippable
linears must not be targeted). Experts, router and the tied lm_head are not adapted."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model

TARGET = r".*decoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
SHARED = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def tie_encoder_to_decoder(model: Any) -> int:
    """Point every adapted encoder projection at the decoder's wrapped module. Returns how many were tied."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    decoder_layers = inner.model.decoder.layers
    encoder_layers = inner.model.encoder.language_model.layers
    tied = 0
    for dec, enc in zip(decoder_layers, encoder_layers, strict=True):
        for path in SHARED:
            owner, name = path.split(".")
            dec_module = getattr(getattr(dec, owner), name, None)
            if dec_module is None or not hasattr(dec_module, "lora_A"):
                continue
            setattr(getattr(enc, owner), name, dec_module)
            tied += 1
    return tied


def untie_encoder(model: Any) -> None:
    """Give the encoder back the plain projections (the LoRA modules' base layers). Needed before peft
    injects another adapter: module traversal skips shared modules, and the encoder comes first, so the
    decoder's adapted modules would be invisible to peft's name matching."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    for enc in inner.model.encoder.language_model.layers:
        for path in SHARED:
            owner, name = path.split(".")
            module = getattr(getattr(enc, owner), name, None)
            if module is not None and hasattr(module, "base_layer"):
                setattr(getattr(enc, owner), name, module.base_layer)


def add_lora(model: Any, rank: int, alpha: float, adapter_name: str = "default") -> Any:
    """Wrap `model` with a fresh trainable LoRA adapter, shared by encoder and decoder."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGET, bias="none")
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    tie_encoder_to_decoder(peft_model)
    return peft_model


def save_adapter(model: Any, path: str | Path) -> None:
    """Save the adapter under the decoder's module names (the ones peft injects into when loading)."""
    untie_encoder(model)
    try:
        model.save_pretrained(str(path))
    finally:
        tie_encoder_to_decoder(model)


def load_adapter(model: Any, path: str | Path, adapter_name: str) -> Any:
    """Load a saved adapter next to the base weights (no copy of the base); returns the PeftModel."""
    if isinstance(model, PeftModel):
        untie_encoder(model)
        model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=False)
    else:
        model = PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=False)
    tie_encoder_to_decoder(model)
    return model


def remove_adapter(model: PeftModel, adapter_name: str) -> Any:
    """Drop one loaded adapter and free its weights. Returns the PeftModel, or, once no adapter is left, the
    bare base model (peft cannot load into a PeftModel without adapters), its encoder and decoder again
    separate modules over shared weights, as loaded."""
    if len(model.peft_config) > 1:
        model.delete_adapter(adapter_name)
        if model.active_adapter not in model.peft_config:  # peft may leave the deleted one named active
            model.set_adapter(next(iter(model.peft_config)))
        return model
    untie_encoder(model)  # the encoder then holds the decoder's base layers: one module under two names
    base = model.unload()
    inner = base.model
    for dec, enc in zip(inner.decoder.layers, inner.encoder.language_model.layers, strict=True):
        for path in SHARED:
            owner, name = path.split(".")
            module = getattr(getattr(enc, owner), name, None)
            if module is not None and module is getattr(getattr(dec, owner), name, None):
                setattr(getattr(enc, owner), name, _twin(module))
    return base


def _twin(module: Any) -> Any:
    """A second module object over the same parameters (so peft's name matching sees both names)."""
    twin = copy.copy(module)
    twin._parameters = dict(module._parameters)
    twin._buffers = dict(module._buffers)
    twin._modules = dict(module._modules)
    return twin
