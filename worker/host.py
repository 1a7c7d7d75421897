"""Hosting models in a worker process: each model, its tokenizer and its engine are loaded once.

The models a worker serves are loaded when it starts and stay. What jobs ask for on demand (a full
fine-tune of a served model, a LoRA adapter next to one) is loaded under the asking job's lease and held
within a memory budget (worker/model_cache.py): least recently used first out, never while a job uses it.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from shared.job_errors import JobError, JobErrorCode
from worker.engine import Engine
from worker.metrics import time_engine_steps, watch_host
from worker.model_cache import Interrupted, ModelCache, TooLarge

log = logging.getLogger(__name__)
CPU_CACHE_BYTES = 8 << 30  # on-demand models and adapters of a worker without a GPU


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

    def ensure_adapter(self, name: str, path: str) -> int:
        """Load a LoRA adapter next to the resident base weights, once (no second copy of the base).
        Returns the bytes its weights added (0 if it was loaded already)."""
        from worker.training.lora import load_adapter

        with self.adapter_lock:
            if name in self.adapters:
                return 0
            before = weight_bytes(self.engine.runner.adapters or self.model)
            self.engine.add_adapter(name, lambda model: load_adapter(model, path, name))
            self.adapters.add(name)
        added = weight_bytes(self.engine.runner.adapters) - before
        log.info("adapter %s loaded on %s (%d bytes)", name, self.name, added)
        return added

    def drop_adapter(self, name: str) -> None:
        """Unload a LoRA adapter, between two engine steps (the caller knows no row uses it)."""
        from worker.training.lora import remove_adapter

        with self.adapter_lock:
            if name not in self.adapters:
                return
            self.engine.remove_adapter(lambda adapters: remove_adapter(adapters, name))
            self.adapters.discard(name)
        log.info("adapter %s unloaded from %s", name, self.name)


def weight_bytes(model: Any) -> int:
    """Bytes of a model's parameters and buffers (shared ones once)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def bytes_on_disk(path: str | Path) -> int:
    """Bytes of the weight files in a model or adapter directory: what loading it will roughly take."""
    files = [f for f in Path(path).glob("*") if f.suffix in (".safetensors", ".bin", ".pt")]
    return sum(f.stat().st_size for f in files)


def default_cache_bytes() -> int:
    """Half the GPU's free memory (asked once the served models are loaded), or CPU_CACHE_BYTES."""
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return free // 2
    return CPU_CACHE_BYTES


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
    max_context: int = 0,
    cuda_graphs: bool = True,
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
    engine = Engine(
        model,
        max_rows=max_rows,
        memory_budget_bytes=memory_bytes or None,
        max_context=max_context or None,
        graphs="auto" if cuda_graphs else "off",
    ).start()
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
    """The models of this worker process, by name: those it serves (`add`), and those jobs load on demand
    (`using`) within `cache_bytes` (0: default_cache_bytes())."""

    def __init__(self, cache_bytes: int = 0) -> None:
        self.models: dict[str, LoadedModel] = {}
        self._loading = threading.Lock()  # one load at a time; jobs on loaded models do not wait for it
        self.cache = ModelCache(lambda: cache_bytes or default_cache_bytes())
        watch_host(self)  # its engines' rows and GPU memory in this process's metrics

    def add(self, loaded: LoadedModel) -> None:
        time_engine_steps(loaded.engine)
        self.models[loaded.name] = loaded

    def get(self, name: str) -> LoadedModel | None:
        return self.models.get(name)

    @contextmanager
    def using(
        self,
        name: str,
        *,
        full: tuple[str, list[int], int | None] | None = None,
        adapter: tuple[str, str] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        **engine_kw: Any,
    ) -> Iterator[LoadedModel | None]:
        """Model `name` for one job (None if this worker has no such model), with `adapter` (name, path)
        loaded next to it. A model this worker does not serve is loaded from `full` (path, EOS ids, weight
        bytes or None) if given. What is loaded on demand is held for the job until the block ends: it is
        not evicted meanwhile. Raises what a load raises, and model_cache.TooLarge or Interrupted."""
        held: list[str] = []
        try:
            if full is not None and (name not in self.models or f"model:{name}" in self.cache.entries):
                path, eos_ids, size = full
                load = lambda: self._load_full(name, path, eos_ids, **engine_kw)  # noqa: E731
                with _as_job_error(JobErrorCode.MODEL_LOAD_FAILED, f"model {name!r}"):
                    self._hold(f"model:{name}", size or bytes_on_disk(path), load, should_stop)
                held.append(f"model:{name}")
            loaded = self.models.get(name)
            if loaded is not None and adapter is not None:
                adapter_name, adapter_path = adapter
                load = lambda: self._load_adapter(loaded, adapter_name, adapter_path)  # noqa: E731
                with _as_job_error(JobErrorCode.ADAPTER_NOT_LOADED, f"adapter {adapter_name!r}"):
                    self._hold(f"adapter:{adapter_name}", bytes_on_disk(adapter_path), load, should_stop)
                held.append(f"adapter:{adapter_name}")
            yield loaded
        finally:
            for key in held:
                self.cache.release(key)

    def _hold(
        self,
        key: str,
        estimate: int,
        load: Callable[[], tuple[int, Callable[[], None]]],
        should_stop: Callable[[], bool],
    ) -> None:
        """Count one more user of `key`, loading it first (after making room) if it is not loaded."""
        if self.cache.acquire(key):
            return
        with self._loading:
            if self.cache.acquire(key):  # another job loaded it meanwhile
                return
            self.cache.make_room(estimate, should_stop)
            size, unload = load()
            self.cache.add(key, size, unload)

    def _load_full(self, name: str, path: str, eos_ids: list[int], **engine_kw: Any) -> tuple[int, Callable[[], None]]:
        loaded = load_model(name, path, eos_ids, **engine_kw)
        self.add(loaded)

        def unload() -> None:
            self.models.pop(name, None)
            loaded.engine.stop()
            _free_memory()
            log.info("model %s unloaded", name)

        return weight_bytes(loaded.model), unload

    def _load_adapter(self, loaded: LoadedModel, name: str, path: str) -> tuple[int, Callable[[], None]]:
        size = loaded.ensure_adapter(name, path)

        def unload() -> None:
            loaded.drop_adapter(name)
            _free_memory()

        return size, unload

    @property
    def hostname(self) -> str:
        return f"{os.uname().nodename}:{os.getpid()}"


@contextmanager
def _as_job_error(code: JobErrorCode, what: str) -> Iterator[None]:
    """A failed load as the job's error: `code` (TooLarge as model_too_large); a stop passes through."""
    try:
        yield
    except Interrupted:
        raise
    except TooLarge as exc:
        raise JobError(
            JobErrorCode.MODEL_TOO_LARGE,
            f"{what}: {exc}, the memory for on-demand models on this worker (CANVAS_MODEL_CACHE_BYTES)",
        ) from exc
    except Exception as exc:
        log.exception("%s could not be loaded", what)
        raise JobError(code, f"{what} could not be loaded: {exc}") from exc


def _free_memory() -> None:
    """Give what an unloaded model or adapter held back to the device (and the allocator's cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
