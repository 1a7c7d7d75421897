"""Hosting models in a worker process: each model and tokenizer is loaded once and kept resident."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    eos_ids: set[int]
    device: torch.device


def pick_device() -> torch.device:
    """The GPU this process is pinned to (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_model(name: str, path: str | Path, eos_ids: list[int], device: torch.device | None = None) -> LoadedModel:
    device = device or pick_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    warm_up(model, device)
    log.info("loaded model %s from %s on %s", name, path, device)
    return LoadedModel(name, model, tokenizer, set(eos_ids), device)


@torch.inference_mode()
def warm_up(model: Any, device: torch.device) -> None:
    """One tiny generation, so the first job does not pay for lazy initialisation (about 1 s on CPU)."""
    bos = model.generation_config.bos_token_id or 0
    model.generate(torch.tensor([[bos]], device=device), max_new_tokens=1, max_denoising_steps=2)


class ModelHost:
    """The models of this worker process, by name. Generation runs one request at a time per host."""

    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}
        self.lock = threading.Lock()  # generate() uses torch's global RNG: one request at a time

    def add(self, loaded: LoadedModel) -> None:
        self.models[loaded.name] = loaded

    def get(self, name: str) -> LoadedModel | None:
        return self.models.get(name)

    @property
    def hostname(self) -> str:
        return f"{os.uname().nodename}:{os.getpid()}"
