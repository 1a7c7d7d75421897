"""Which tensors a checkpoint quantizes: the size rule (tensors under MIN_WEIGHTS stay in the base dtype)
on the shipped demo model and on the released 26B-A4B architecture, built on the meta device (no memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import DiffusionGemmaConfig, DiffusionGemmaTextConfig

from bench.arch import ARCHS, CANVAS
from worker.quantized.checkpoint import meta_model
from worker.quantized.layout import MIN_WEIGHTS, targets
from worker.stack import SHIPPED


def quantized_paths(model, min_weights: int) -> set[str]:
    return {path for target in targets(model, min_weights) for path in target.paths}


@pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="no shipped demo model")
def test_the_demo_models_narrow_key_value_projections_stay_unquantized() -> None:
    model = meta_model(SHIPPED)
    kept = quantized_paths(model, 0) - quantized_paths(model, MIN_WEIGHTS)
    attention = "model.decoder.layers.0.self_attn"
    assert {f"{attention}.k_proj", f"{attention}.v_proj"} <= kept  # 32 x 192 = 6,144 weights each
    # and the 16-wide vision tower's input projection (16 x 768), the only other tensor under the rule
    assert {p.rsplit(".", 1)[-1] for p in kept} == {"k_proj", "v_proj", "input_proj"}
    assert f"{attention}.q_proj" in quantized_paths(model, MIN_WEIGHTS)  # 192 x 192


def test_the_size_rule_keeps_nothing_of_the_released_architecture(tmp_path: Path) -> None:
    text = DiffusionGemmaTextConfig(**ARCHS["26b"])
    DiffusionGemmaConfig(text_config=text, vision_config=None, canvas_length=CANVAS["26b"]).save_pretrained(tmp_path)
    model = meta_model(tmp_path)
    assert quantized_paths(model, MIN_WEIGHTS) == quantized_paths(model, 0)
