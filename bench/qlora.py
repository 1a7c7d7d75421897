"""Benchmark (issue 5, GPU): QLoRA on a mid-size random DiffusionGemma. Builds the config with
worker.tiny.tiny_config at a larger size (default hidden 2048, 16 layers, canvas 256: ~0.97B parameters,
0.40B of them in the 3D expert tensors that bitsandbytes does not quantize), saves it in bf16, reloads it
4-bit (nf4, bf16 compute) the way the fine-tune task does, applies the project's shared LoRA and trains
with the project's Trainer (8-bit AdamW when quantized) on synthetic prompt/response examples. Prints the
loss every few steps, then one SUMMARY line of JSON per run: parameters, linear weights quantized or not,
peak GPU memory after load and after training, tokens/s and s/step after 3 warm-up steps, first/last loss.

  python bench/qlora.py [--quantization 4bit|8bit|none] [--quantize-shared] [--compare]
                        [--hidden 2048] [--layers 16] [--canvas 256] [--prompt 64] [--steps 30]
                        [--batch 8] [--examples 64] [--rank 16] [--lr 1e-3] [--max-seconds 90] [--small]

--compare runs the same again with a bf16 base (--quantization none) after the quantized run.
--quantize-shared loads as the fine-tune task now does (worker/training/quantize.py: skip list ["lm_head"],
so the shared encoder/decoder layers are quantized). Without it, transformers' default skip list leaves
every tied weight unquantized: all encoder/decoder text layers are tied, so only the vision tower and the
self-conditioning linears get quantized (the task's load before the fix; kept to show the difference).
--small is a CPU smoke test (hidden 128, 2 layers, canvas 32, prompt 16): use it with --quantization none.
Quantized runs need CUDA, bitsandbytes and accelerate; without them they exit 2. Needs only torch,
transformers, peft (and bitsandbytes), no service packages, so it runs on a bare GPU machine."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import DiffusionGemmaForBlockDiffusion

from worker.tiny import BOS_ID, EOS_ID, SPECIAL_TOKENS, VOCAB_SIZE, tiny_config
from worker.training.lora import add_lora
from worker.training.objective import Example
from worker.training.quantize import quantization_config
from worker.training.trainer import Trainer, TrainingCanceled, TrainPlan, freeze_router

WARMUP = 3  # steps left out of the throughput means
GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantization", choices=["4bit", "8bit", "none"], default="4bit")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per example")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-seconds", type=float, default=90.0, help="wall-clock guard per training run")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument(
        "--quantize-shared",
        action="store_true",
        help="also quantize the tied encoder/decoder layers (the project's load leaves them bf16)",
    )
    parser.add_argument("--compare", action="store_true", help="also run a bf16 base (--quantization none)")
    parser.add_argument("--small", action="store_true", help="CPU smoke-test sizes")
    args = parser.parse_args(argv)
    if args.small:
        args.hidden, args.layers, args.canvas, args.prompt = 128, 2, 32, 16
    return args


def build_base(directory: Path, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Random-init the model in bf16 on `device`, save it to `directory`; return its parameter counts."""
    torch.manual_seed(0)
    positions = max(1024, 2 * (args.prompt + args.canvas))
    config = tiny_config(args.canvas, max_positions=positions, hidden=args.hidden, layers=args.layers)
    with torch.device(device):
        model = DiffusionGemmaForBlockDiffusion._from_config(config, dtype=torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())  # tied encoder/decoder weights counted once
    linear = {id(p): p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
    model.save_pretrained(directory)
    del model
    free_memory()
    return {"total": total, "in_linear_layers": sum(linear.values())}


def load(directory: Path, quantization: str, device: str, rank: int, quantize_shared: bool) -> Any:
    """The fine-tune task's load (worker/train_tasks.py load_for_training), then the shared LoRA.
    Without `quantize_shared` the skip list is left to transformers (the task's load before the fix in
    worker/training/quantize.py): it skips every tied weight, so the shared layers stay bf16."""
    kwargs: dict[str, Any] = {}
    if quantization != "none":
        config = quantization_config(quantization)
        if not quantize_shared:
            config.llm_int8_skip_modules = None
        kwargs["quantization_config"] = config
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(directory, **kwargs)
    if quantization == "none":
        model = model.to(device)
    for param in model.parameters():
        param.requires_grad_(False)
    model = add_lora(model, rank, 2 * rank)
    freeze_router(model)
    return model


def linear_split(model: Any) -> dict[str, int]:
    """Frozen nn.Linear weights (each shared one once) by whether bitsandbytes replaced them."""
    seen: set[int] = set()
    split = {"quantized": 0, "not_quantized": 0}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None or weight.requires_grad or id(weight) in seen:
            continue
        seen.add(id(weight))
        split["not_quantized" if type(module) is torch.nn.Linear else "quantized"] += (
            module.in_features * module.out_features
        )
    return split


def synthetic_examples(n: int, prompt: int, canvas: int, seed: int = 0) -> list[Example]:
    """Random byte tokens: a fixed-length prompt and a response of canvas/2 .. canvas-1 tokens, so every
    example pads to one canvas and a step's batch is one forward pass."""
    rng = random.Random(seed)
    low = len(SPECIAL_TOKENS)

    def tokens(k: int) -> list[int]:
        return [rng.randrange(low, VOCAB_SIZE) for _ in range(k)]

    return [Example([BOS_ID, *tokens(prompt - 1)], tokens(rng.randint(canvas // 2, canvas - 1))) for _ in range(n)]


def train(model: Any, examples: list[Example], args: argparse.Namespace, eight_bit: bool) -> list[dict[str, Any]]:
    """Run the project's Trainer until --steps or --max-seconds; return per-step metrics (+ wall s)."""
    plan = TrainPlan(args.lr, args.batch, args.steps, WARMUP, 10**9, 1, EOS_ID)
    trainer = Trainer(model, examples, plan, eight_bit_optimizer=eight_bit)
    steps: list[dict[str, Any]] = []
    started = last = time.perf_counter()

    def on_metrics(metrics: dict[str, Any]) -> None:
        nonlocal last
        sync()
        now = time.perf_counter()
        steps.append({**metrics, "wall_s": now - last})
        last = now
        if metrics["step"] % args.log_every == 0 or metrics["step"] in (1, args.steps):
            print(
                f"  step {metrics['step']:4d}  loss {metrics['loss']:.4f}  "
                f"(diffusion {metrics['diffusion_loss']:.4f}, encoder {metrics['encoder_loss']:.4f})  "
                f"{metrics['tokens_per_s']:.0f} tok/s  {now - started:.1f}s",
                flush=True,
            )

    def should_stop() -> bool:
        return time.perf_counter() - started > args.max_seconds

    try:
        trainer.run(on_metrics, lambda *a: None, Path(tempfile.mkdtemp()), should_stop)
    except TrainingCanceled:
        print(f"  stopped by --max-seconds {args.max_seconds:g} after {len(steps)} steps", flush=True)
    return steps


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / GIB, 3) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def run_one(directory: Path, quantization: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    print(f"== quantization={quantization}", flush=True)
    free_memory()
    reset_peak()
    started = time.perf_counter()
    model = load(directory, quantization, device, args.rank, args.quantize_shared)
    load_s = time.perf_counter() - started
    after_load = peak_gib()
    footprint = model.get_base_model().get_memory_footprint() / GIB
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    linear = linear_split(model)
    examples = synthetic_examples(args.examples, args.prompt, args.canvas)
    steps = train(model, examples, args, eight_bit=quantization != "none")
    del model
    free_memory()
    summary = summarize(steps)
    return {
        "quantization": quantization,
        "quantize_shared": args.quantize_shared and quantization != "none",
        "linear_params": linear,
        "trainable_parameters": trainable,
        "model_footprint_gib": round(footprint, 3),
        "load_s": round(load_s, 1),
        "peak_gib_after_load": after_load,
        "peak_gib_after_training": peak_gib(),
    } | summary


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Step counts, throughput after the warm-up steps, first and last loss."""
    timed = steps[WARMUP:] or steps  # too few steps: no warm-up to leave out

    def mean(key: str) -> float | None:
        return sum(s[key] for s in timed) / len(timed) if timed else None

    s_per_step = mean("wall_s")
    return {
        "steps": len(steps),
        "timed_steps": len(timed),
        "tokens_per_s": round(mean("tokens_per_s"), 1) if timed else None,
        "s_per_step": round(s_per_step, 3) if timed else None,
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    missing = [m for m in ("bitsandbytes", "accelerate") if importlib.util.find_spec(m) is None]
    if args.quantization != "none" and (not cuda or missing):
        print(
            f"--quantization {args.quantization} needs a CUDA GPU, bitsandbytes and accelerate; "
            f"missing: {', '.join(([] if cuda else ['CUDA GPU']) + missing)}. "
            "Use --quantization none (with --small for a CPU smoke test).",
            file=sys.stderr,
        )
        return 2
    device = "cuda" if cuda else "cpu"
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device {gpu}; torch {torch.__version__}; sizes {vars(args)}", flush=True)
    runs = [args.quantization] + (["none"] if args.compare and args.quantization != "none" else [])
    tokens_per_step = args.batch * (args.prompt + args.canvas)
    with tempfile.TemporaryDirectory() as tmp:
        params = build_base(Path(tmp) / "base", args, device)
        print(f"base: {params['total'] / 1e6:.1f}M parameters ({params['in_linear_layers'] / 1e6:.1f}M in nn.Linear)")
        for quantization in runs:
            summary = {"gpu": gpu, "parameters": params, "tokens_per_step": tokens_per_step}
            summary |= run_one(Path(tmp) / "base", quantization, args, device)
            wall = summary["s_per_step"]
            summary["tokens_per_s_wall"] = round(tokens_per_step / wall, 1) if wall else None
            print("SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
