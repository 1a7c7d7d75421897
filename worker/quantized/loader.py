"""Loading a quantized checkpoint (checkpoint.py's output): the model's parameters are built on the `meta`
device, each stored tensor is read straight onto the target device and put in place once (quantized
modules built from their stored tensors, their weights shared by encoder and decoder; the rest cast to the base dtype);
only the small non-persistent buffers (rotary frequencies, embedding scales) are computed, on the CPU, and
moved. Knows files and the model's layout; not the service.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.quantized.checkpoint import meta_model, min_weights_of, read_config, read_tensors, shard_files
from worker.quantized.codecs import QuantizationError, codec
from worker.quantized.hardware import check_hardware, enable_scaled_matmul
from worker.quantized.layout import Target, aliases, build, place, set_tensor, targets

log = logging.getLogger(__name__)


def quantization_of(path: str | Path) -> str:
    """The method a checkpoint is quantized with, or "none" (read from config.json; no torch work)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return "none"
    record = json.loads(config_file.read_text()).get("canvas_quantization")
    return str(record["method"]) if record else "none"


def load_quantized(path: str | Path, device: torch.device, dtype: torch.dtype) -> Any:
    """The quantized DiffusionGemma of `path` on `device`, computing in `dtype`, in eval mode. Raises
    UnsupportedQuantization when the device cannot run the method, QuantizationError when the
    checkpoint is incomplete or inconsistent."""
    path = Path(path)
    method = quantization_of(path)
    if method == "none":
        raise QuantizationError(f"{path} is not a quantized checkpoint (no canvas_quantization in config.json)")
    check_hardware(method, device)
    min_weights = min_weights_of(read_config(path)["canvas_quantization"], path)
    model = meta_model(path)
    _fill(model, path, method, targets(model, min_weights), device, dtype)
    move_buffers(model, device)
    leftover = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftover:
        raise QuantizationError(f"{path} lacks {len(leftover)} tensors, first {leftover[0]}")
    _generation_config(model, path)
    scaled = enable_scaled_matmul(model, device) if method == "fp8" else {}
    model.canvas_quantization = method
    log.info("loaded %s quantized %s on %s%s", path, method, device, f" (scaled matmuls: {scaled})" if scaled else "")
    return model.eval()


def _fill(
    model: nn.Module, path: Path, method: str, plan: list[Target], device: torch.device, dtype: torch.dtype
) -> None:
    """Every stored tensor into place, read once onto `device`; `plan` names the quantized modules."""
    config = model.config.get_text_config(decoder=True)
    method_codec = codec(method)
    owner: dict[str, tuple[Target, str]] = {}
    for target in plan:
        for key, (_path, local) in target.keys(method_codec).items():
            owner[key] = (target, local)
    names = aliases(model)
    pending: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in read_tensors(shard_files(path), str(device)):
        if name in owner:
            target, local = owner[name]
            stored = pending.setdefault(id(target), {})
            stored[local] = tensor
            if set(stored) == target.local_names(method_codec):
                place(model, target, build(target, method, pending.pop(id(target)), config, dtype))
        elif name in names:
            set_tensor(model, names[name], tensor.to(dtype) if tensor.is_floating_point() else tensor)
        else:
            raise QuantizationError(f"{path}: unexpected tensor {name} (not a {method} DiffusionGemma checkpoint?)")
    if pending:
        target = next(t for t in plan if id(t) in pending)
        raise QuantizationError(f"{path}: incomplete quantized tensors of {target.paths[-1]}")


def move_buffers(model: nn.Module, device: torch.device) -> None:
    """The buffers the checkpoint does not hold (computed on the CPU when the model was built) onto `device`."""
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and not buffer.is_meta and buffer.device != device:
                module._buffers[name] = buffer.to(device)


def _generation_config(model: Any, path: Path) -> None:
    if (path / "generation_config.json").is_file():
        model.generation_config = type(model.generation_config).from_pretrained(path)
