"""The batched block-denoising engine (pure PyTorch and transformers' model classes; no service code)."""

from worker.engine.engine import Engine
from worker.engine.params import InvalidParams, Request, SamplingParams
from worker.engine.rows import EngineResult, RequestHandle

__all__ = ["Engine", "EngineResult", "InvalidParams", "Request", "RequestHandle", "SamplingParams"]
