"""`canvas models quantize SRC DST --method nf4|int8|fp8`: a bf16/fp32 DiffusionGemma checkpoint in, a
quantized one out, one tensor at a time.

Each source tensor is read alone (safetensors), quantized if it is a target's weight (layout.py), and
buffered until the output shard is full (`shard_bytes`): host memory stays one output shard plus one
tensor, whatever the model's size. The output is written to a hidden sibling directory and renamed onto
DST at the end, so a failure leaves nothing behind. config.json records the method under
`canvas_quantization` (format 2: with `min_weights`, the size under which tensors stay unquantized;
format 1, before that rule, quantized every target); every other file of SRC (tokenizer, generation
config, chat template, card) is copied. Knows files and the model's layout; not the registry.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from worker.quantized.codecs import NF4_BLOCK, QuantizationError, codec
from worker.quantized.layout import MIN_WEIGHTS, SKIP, Target, targets

FORMAT = 2  # 1: every target quantized (no min_weights); 2: tensors under record["min_weights"] kept
INDEX = "model.safetensors.index.json"
SHARD_BYTES = 2 << 30


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a DiffusionGemma checkpoint; raises naming what is wrong with `path`."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise QuantizationError(f"{path} has no config.json: not a Hugging Face checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise QuantizationError(f"{config_file} is not valid JSON ({exc})") from exc
    if config.get("model_type") != "diffusion_gemma":
        raise QuantizationError(f"{path} is a {config.get('model_type')!r} checkpoint, not diffusion_gemma")
    return config


def shard_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files, from its index where it has one."""
    index = path / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({path / f for f in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise QuantizationError(f"{path} has no *.safetensors weights")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise QuantizationError(f"{path}: the index names shards that do not exist: {', '.join(missing)}")
    return files


def min_weights_of(record: dict[str, Any], path: Path) -> int:
    """The size under which the checkpoint at `path` kept tensors unquantized, from its record's format."""
    version = record.get("format", 1)
    if version == 1:
        return 0
    if version == FORMAT:
        return int(record["min_weights"])
    raise QuantizationError(
        f"{path} is a format {version} quantized checkpoint; this Canvas reads formats 1-{FORMAT} (upgrade it)"
    )


def meta_model(config_path: Path) -> Any:
    """The model of `config_path`'s config with its parameters on the meta device (shapes and module types,
    no memory); buffers (rotary frequencies, embedding scales: small) are computed on the CPU as usual."""
    from accelerate import init_empty_weights
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    config = DiffusionGemmaConfig.from_pretrained(config_path)
    with init_empty_weights(include_buffers=False):
        model = DiffusionGemmaForBlockDiffusion._from_config(config, attn_implementation="sdpa")
    model.tie_weights()  # encoder and decoder share each layer's weights, lm_head the embeddings
    return model


def read_tensors(files: list[Path], device: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time; a file that is not valid safetensors raises naming it."""
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device=device) as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield name, handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise QuantizationError(f"{file.name}: not a readable safetensors file ({exc})") from exc


@dataclass
class ShardWriter:
    """Buffers tensors (on the CPU) and writes a shard when `max_bytes` would be passed."""

    directory: Path
    max_bytes: int
    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    pending_bytes: int = 0
    shards: list[list[str]] = field(default_factory=list)
    total_bytes: int = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Add tensors that belong together (one module's): they land in the same shard."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending.update({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if self.pending:
            save_file(self.pending, str(self.directory / f"shard-{len(self.shards)}.safetensors"), {"format": "pt"})
            self.shards.append(list(self.pending))
            self.pending, self.pending_bytes = {}, 0

    def finish(self, metadata: dict[str, Any]) -> None:
        """Name the shards model-0000i-of-0000n and write the index."""
        self.flush()
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
            (self.directory / f"shard-{i}.safetensors").rename(self.directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {
            "metadata": {"total_size": self.total_bytes, **metadata},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (self.directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def quantize_checkpoint(
    src: Path,
    dst: Path,
    method: str,
    *,
    device: str | None = None,
    shard_bytes: int = SHARD_BYTES,
    min_weights: int = MIN_WEIGHTS,
) -> dict[str, Any]:
    """Write `src` quantized with `method` to `dst` (which must not exist), tensors of fewer than
    `min_weights` weights kept as they are. Returns the quantization record written to config.json.
    Quantizes on the GPU when there is one (bitsandbytes is slow on the CPU)."""
    codec(method)  # an unknown method fails before anything is read
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if "canvas_quantization" in config:
        raise QuantizationError(f"{src} is already quantized ({config['canvas_quantization'].get('method')})")
    if dst.exists():
        raise QuantizationError(f"{dst} already exists; choose a new directory")
    files = shard_files(src)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tensors = read_tensors(files, device)
    return write_quantized(src, tensors, dst, method, shard_bytes=shard_bytes, weights=files, min_weights=min_weights)


def write_quantized(
    src: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    dst: Path,
    method: str,
    *,
    shard_bytes: int = SHARD_BYTES,
    weights: Iterable[Path] = (),
    min_weights: int = MIN_WEIGHTS,
) -> dict[str, Any]:
    """Quantize the checkpoint whose config.json (and side files) lie in `src` and whose tensors `tensors`
    yields one at a time (read from its files, or made up by a benchmark), into `dst`."""
    config = read_config(src)
    work = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        record = _convert(src, tensors, work, method, shard_bytes, min_weights)
        _copy_side_files(src, work, list(weights))
        (work / "config.json").write_text(json.dumps({**config, "canvas_quantization": record}, indent=2) + "\n")
        work.rename(dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return record


def _convert(
    src: Path, tensors: Iterable[tuple[str, torch.Tensor]], work: Path, method: str, shard_bytes: int, min_weights: int
) -> dict[str, Any]:
    method_codec = codec(method)
    plan = targets(meta_model(src), min_weights)
    by_key: dict[str, tuple[Target, str]] = {}
    for target in plan:
        for path in target.paths:
            for weight in target.shapes:
                by_key[f"{path}.{weight}"] = (target, weight)
    done: set[int] = set()
    writer = ShardWriter(work, shard_bytes)
    for name, tensor in tensors:
        if name not in by_key:
            writer.add({name: tensor})
            continue
        target, weight = by_key[name]
        expected = target.shapes[weight]
        if tuple(tensor.shape) != expected:
            raise QuantizationError(f"{name} has shape {tuple(tensor.shape)}; the config says {expected}")
        writer.add({name + suffix: t for suffix, t in method_codec.quantize(tensor).items()})
        done.add(id(target))
        del tensor
    missing = [t.paths[-1] for t in plan if id(t) not in done]
    if missing:
        raise QuantizationError(f"{src} lacks the weights of {len(missing)} modules, first {missing[0]}")
    record = {
        "method": method,
        "format": FORMAT,
        "block_size": NF4_BLOCK if method == "nf4" else None,
        "min_weights": min_weights,
        "kept": [*SKIP, "embeddings", "norms", f"tensors under {min_weights} weights"],
        "weight_bytes": writer.total_bytes,
    }
    writer.finish({"format": "pt", "canvas_quantization": method})
    return record


def _copy_side_files(src: Path, work: Path, weights: list[Path]) -> None:
    """Everything in SRC but its weights, index and config (tokenizer, generation config, template, card)."""
    skip = {f.name for f in weights} | {INDEX, "config.json"}
    for item in src.iterdir():
        if item.is_file() and item.name not in skip and not item.name.endswith(".safetensors"):
            shutil.copy2(item, work / item.name)
