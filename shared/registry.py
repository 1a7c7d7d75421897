"""The model registry: local Hugging Face directories, described from their JSON files (no torch here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest
from shared.models import ModelRecord


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


QUANTIZATIONS = ("none", "nf4", "int8", "fp8")


def weight_facts(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """How the weights are quantized (`canvas models quantize` records it in config.json) and their bytes
    (the index's total, else the safetensors files' sizes)."""
    record = config.get("canvas_quantization") or {}
    quantization = record.get("method", "none")
    if quantization not in QUANTIZATIONS:
        raise InvalidRequest(f"{path} is quantized with {quantization!r}, which Canvas does not serve", "path")
    index = path / "model.safetensors.index.json"
    total = json.loads(index.read_text()).get("metadata", {}).get("total_size") if index.exists() else None
    if total is None:
        total = sum(f.stat().st_size for f in path.glob("*.safetensors")) or None
    return {"quantization": quantization, "weight_bytes": int(total) if total is not None else None}


def describe_model_dir(path: Path) -> dict[str, Any]:
    """Facts the API needs to validate jobs, read from config.json and generation_config.json."""
    config_file = path / "config.json"
    if not config_file.exists():
        raise InvalidRequest(f"{path} has no config.json; expected a Hugging Face model directory", "path")
    if not (path / "tokenizer.json").exists():
        raise InvalidRequest(f"{path} has no tokenizer.json", "path")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "diffusion_gemma":
        raise InvalidRequest(f"{path} is a {config.get('model_type')!r} model, not diffusion_gemma", "path")
    text = config.get("text_config", {})
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    eos = _as_list(gen.get("eos_token_id", text.get("eos_token_id")))
    pad = gen.get("pad_token_id", text.get("pad_token_id"))
    return {
        "canvas_length": int(config.get("canvas_length", 256)),
        "max_positions": int(text.get("max_position_embeddings", 131072)),
        "vocab_size": int(text.get("vocab_size", 262144)),
        "eos_token_ids": eos,
        "pad_token_id": int(pad if pad is not None else 0),
        **weight_facts(path, config),
    }


def register_model(session: Session, name: str, path: Path) -> ModelRecord:
    """Add or update a model by name. The path is stored absolute."""
    path = path.resolve()
    facts = describe_model_dir(path)
    record = session.get(ModelRecord, name)
    if record is None:
        record = ModelRecord(name=name, path=str(path), **facts)
        session.add(record)
    else:
        record.path = str(path)
        for key, value in facts.items():
            setattr(record, key, value)
    session.flush()
    return record


def list_models(session: Session) -> list[ModelRecord]:
    return list(session.scalars(select(ModelRecord).order_by(ModelRecord.name)))
