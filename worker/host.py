"""Hosting models in a worker process: each model, its tokenizer and its engine are loaded once."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from worker.engine import Engine
from worker.metrics import time_engine_steps, watch_host

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    device: torch.device
    engine: Engine

    adapters: set[str] = field(default_factory=set)
    adapter_lock: threading.Lock = field(default_factory=threading.Lock)  # many job threads, one load

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token decoded alone, special tokens included (for log-probability listings)."""
        return self.tokenizer.decode([token_id])

    def ensure_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter next to the resident base weights, once (no second copy of the base)."""
        from worker.training.lora import load_adapter

        with self.adapter_lock:
            if name in self.adapters:
                return
            self.engine.add_adapter(name, lambda model: load_adapter(model, path, name))
            self.adapters.add(name)
        log.info("adapter %s loaded on %s", name, self.name)


def pick_device() -> torch.device:
    """The GPU this process is pinned to (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pinned_device() -> torch.device:
    """`pick_device`, but a process pinned to a GPU (CUDA_VISIBLE_DEVICES names one) that finds no CUDA
    device raises instead of falling back to the CPU."""
    device = pick_device()
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if device.type == "cpu" and pinned and pinned != "-1":
        raise RuntimeError(
            f"GPU {pinned} was asked for (CUDA_VISIBLE_DEVICES={pinned}) but torch finds no CUDA device: check "
            "the NVIDIA driver and that torch is a CUDA build"
        )
    return device


def load_model(
    name: str,
    path: str | Path,
    eos_ids: list[int],
    *,
    max_rows: int = 16,
    memory_bytes: int = 0,
    device: torch.device | None = None,
) -> LoadedModel:
    """Load weights and tokenizer, warm up, and start the model's engine thread. A quantized checkpoint
    (`canvas models quantize`) is built on the meta device and read straight onto the device; one whose
    method the device cannot run raises UnsupportedQuantization here, before the worker takes a job."""
    device = device or pick_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_weights(path, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    warm_up(model, device)
    engine = Engine(model, max_rows=max_rows, memory_budget_bytes=memory_bytes or None).start()
    how = getattr(model, "canvas_quantization", "none")
    log.info("loaded model %s from %s on %s (weights: %s, engine: %d rows)", name, path, device, how, max_rows)
    return LoadedModel(name, model, tokenizer, frozenset(eos_ids), device, engine)


def load_weights(path: str | Path, device: torch.device, dtype: torch.dtype) -> Any:
    """The model of `path` on `device` in eval mode, quantized or not."""
    from worker.quantized.loader import load_quantized, quantization_of

    if quantization_of(path) != "none":
        return load_quantized(path, device, dtype)
    return DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=dtype).to(device).eval()


@torch.inference_mode()
def warm_up(model: Any, device: torch.device) -> None:
    """One tiny generation, so the first job does not pay for lazy initialisation (about 1 s on CPU)."""
    bos = model.generation_config.bos_token_id or 0
    model.generate(torch.tensor([[bos]], device=device), max_new_tokens=1, max_denoising_steps=2)


class ModelHost:
    """The models of this worker process, by name."""

    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}
        self._loading = threading.Lock()
        watch_host(self)  # its engines' rows and GPU memory in this process's metrics

    def ensure(self, name: str, path: str, eos_ids: list[int], **engine_kw: Any) -> LoadedModel:
        """The model, loaded on first use (a full fine-tune of a base this worker serves)."""
        with self._loading:
            if name not in self.models:
                self.add(load_model(name, path, eos_ids, **engine_kw))
        return self.models[name]

    def add(self, loaded: LoadedModel) -> None:
        time_engine_steps(loaded.engine)
        self.models[loaded.name] = loaded

    def get(self, name: str) -> LoadedModel | None:
        return self.models.get(name)

    @property
    def hostname(self) -> str:
        return f"{os.uname().nodename}:{os.getpid()}"
