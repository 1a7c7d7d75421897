"""`canvas models quantize` and loading its output: the same model as quantizing in memory, shared layers
shared again, the side files copied; bad input refused with the problem named and nothing left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from shared.cli import main
from tests.worker.quantized.test_modules import canvas_logits
from worker.quantized.checkpoint import quantize_checkpoint
from worker.quantized.codecs import QuantizationError
from worker.quantized.hardware import UnsupportedQuantization
from worker.quantized.layout import quantize_model
from worker.quantized.loader import load_quantized, quantization_of

CPU = torch.device("cpu")


def test_a_loaded_checkpoint_is_the_model_quantized_in_memory(tiny_model_dir, nf4_tiny_dir) -> None:
    loaded = load_quantized(nf4_tiny_dir, CPU, torch.float32)
    in_memory = quantize_model(
        DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval(), "nf4", min_weights=0
    )
    assert torch.equal(canvas_logits(loaded), canvas_logits(in_memory))
    decoder, encoder = loaded.model.decoder, loaded.model.encoder.language_model
    # one backbone, tied as transformers ties it: modules apart, weights shared
    assert encoder.layers[1].experts.gate_up_proj is decoder.layers[1].experts.gate_up_proj
    assert encoder.layers[0].self_attn.q_proj.weight is decoder.layers[0].self_attn.q_proj.weight
    assert loaded.lm_head.weight is decoder.embed_tokens.weight is encoder.embed_tokens.weight
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    assert loaded.generation_config.eos_token_id == 1


def test_the_output_records_its_method_and_keeps_the_side_files(tiny_model_dir, nf4_tiny_dir) -> None:
    config = json.loads((nf4_tiny_dir / "config.json").read_text())
    assert config["canvas_quantization"]["method"] == quantization_of(nf4_tiny_dir) == "nf4"
    assert quantization_of(tiny_model_dir) == "none"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "canvas_card.json"):
        assert (nf4_tiny_dir / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    index = json.loads((nf4_tiny_dir / "model.safetensors.index.json").read_text())
    experts = "model.decoder.layers.0.experts.gate_up_proj"
    assert {experts, experts + "_absmax"} <= set(index["weight_map"])
    fp32_bytes = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert index["metadata"]["total_size"] < fp32_bytes


def test_small_shards_hold_each_module_whole(tiny_model_dir, tmp_path) -> None:
    dst = tmp_path / "int8"
    quantize_checkpoint(tiny_model_dir, dst, "int8", device="cpu", shard_bytes=60_000, min_weights=0)
    weight_map = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 2
    assert all(weight_map[k + "_scale"] == weight_map[k] for k in weight_map if k + "_scale" in weight_map)
    assert load_quantized(dst, CPU, torch.float32).canvas_quantization == "int8"


def test_fp8_refuses_a_device_without_fp8_tensor_cores(tiny_model_dir, tmp_path) -> None:
    dst = tmp_path / "fp8"
    quantize_checkpoint(tiny_model_dir, dst, "fp8", device="cpu")
    with pytest.raises(UnsupportedQuantization, match=r"compute capability 8\.9 or newer.*--method nf4 or int8"):
        load_quantized(dst, CPU, torch.float32)


def run_cli(*argv: str, capsys) -> tuple[int, str]:
    code = main(["models", "quantize", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def broken_copy(tiny_model_dir: Path, tmp_path: Path, how: str) -> Path:
    src = tmp_path / f"src-{how}"
    shutil.copytree(tiny_model_dir, src)
    if how == "llama":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    elif how == "corrupt":
        shard = next(src.glob("*.safetensors"))
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return src


@pytest.mark.parametrize(
    ("how", "method", "message"),
    [
        ("llama", "nf4", "is a 'llama' checkpoint, not diffusion_gemma"),
        ("corrupt", "nf4", "model.safetensors: not a readable safetensors file"),
        ("fine", "q3", "unknown quantization method 'q3'; known: nf4, int8, fp8"),
    ],
)
def test_bad_input_is_named_and_leaves_nothing_behind(tiny_model_dir, tmp_path, capsys, how, method, message) -> None:
    src = broken_copy(tiny_model_dir, tmp_path, how)
    out = tmp_path / "out"
    out.mkdir()
    code, text = run_cli(str(src), str(out / "q"), "--method", method, capsys=capsys)
    assert code == 2
    assert message in text
    assert list(out.iterdir()) == []  # no DST, no partial directory


def test_an_existing_destination_or_a_quantized_source_is_refused(nf4_tiny_dir, tiny_model_dir, tmp_path) -> None:
    with pytest.raises(QuantizationError, match="already exists"):
        quantize_checkpoint(tiny_model_dir, nf4_tiny_dir, "int8")
    with pytest.raises(QuantizationError, match=r"already quantized \(nf4\)"):
        quantize_checkpoint(nf4_tiny_dir, tmp_path / "twice", "int8")


def test_the_command_writes_a_checkpoint(tiny_model_dir, tmp_path, capsys) -> None:
    code, text = run_cli(str(tiny_model_dir), str(tmp_path / "q"), "--method", "int8", "--device", "cpu", capsys=capsys)
    assert code == 0, text
    assert "canvas models add NAME" in text
    assert quantization_of(tmp_path / "q") == "int8"


def test_tensors_under_min_weights_stay_as_they_were(tiny_model_dir, tmp_path) -> None:
    """At min_weights=4096 the tiny model's q_proj (64 x 64) is quantized and its k_proj (32 x 64) kept."""
    dst = tmp_path / "nf4-4096"
    record = quantize_checkpoint(tiny_model_dir, dst, "nf4", device="cpu", min_weights=4096)
    assert (record["format"], record["min_weights"]) == (2, 4096)
    weight_map = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    attention = "model.decoder.layers.0.self_attn"
    assert f"{attention}.q_proj.weight_absmax" in weight_map
    assert f"{attention}.k_proj.weight" in weight_map and f"{attention}.k_proj.weight_absmax" not in weight_map
    source = DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()
    loaded = load_quantized(dst, CPU, torch.float32)
    got, was = loaded.model.decoder.layers[0].self_attn, source.model.decoder.layers[0].self_attn
    assert type(got.k_proj) is torch.nn.Linear and torch.equal(got.k_proj.weight, was.k_proj.weight)
    assert type(got.q_proj).__name__ == "Linear4bit"
    assert torch.equal(canvas_logits(loaded), canvas_logits(quantize_model(source, "nf4", min_weights=4096)))


def rewrite_record(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    record = {k: v for k, v in config["canvas_quantization"].items() if k != "min_weights"} | changes
    (directory / "config.json").write_text(json.dumps({**config, "canvas_quantization": record}))


def test_a_format_1_checkpoint_still_loads_and_a_newer_format_is_refused(nf4_tiny_dir, tmp_path) -> None:
    """Format 1 (before the size rule) quantized every target: it loads as it did. A format this Canvas does
    not know is refused by name, not misread."""
    old, newer = tmp_path / "format-1", tmp_path / "format-3"
    for directory, version in ((old, 1), (newer, 3)):
        shutil.copytree(nf4_tiny_dir, directory)
        rewrite_record(directory, format=version)
    expected = canvas_logits(load_quantized(nf4_tiny_dir, CPU, torch.float32))
    assert torch.equal(canvas_logits(load_quantized(old, CPU, torch.float32)), expected)
    with pytest.raises(QuantizationError, match="format 3 quantized checkpoint; this Canvas reads formats 1-2"):
        load_quantized(newer, CPU, torch.float32)
