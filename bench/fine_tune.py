"""Benchmark: fine-tuning the tiny random DiffusionGemma (CPU) with the block-diffusion objective, full and
LoRA, on 30 word -> transform pairs; prints loss drop, steps/s, tokens/s and how many completions the
result reproduces exactly through the engine. Numbers, not assertions.

  python bench/fine_tune.py [--steps 400] [--tasks copy,reverse] [--methods full,lora] [--canvas 16]
                            [--base models/DIR] [--lora-lr 1e-2] [--full-lr 3e-3] [--seed 1] [--threads N]

--base fine-tunes an existing model directory (a trained base, e.g. the demo model) instead of a fresh
tiny random one. `meets_targets` says whether a run meets the fine-tuning targets (the mean diffusion loss
of the last 10 steps at least 80% below the first 10's, at least 90% of the completions exact), which
tests/e2e/test_fine_tunes.py asserted on these two runs until issue 16 moved the figures here:

  python bench/fine_tune.py --tasks copy --methods full --steps 800
  python bench/fine_tune.py --base models/canvas-demo --methods lora --steps 600 --lora-lr 2e-3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.tiny import make_tiny
from worker.training.lora import add_lora
from worker.training.objective import Example
from worker.training.trainer import Trainer, TrainPlan, freeze_router

TASKS = {"copy": lambda w: w, "reverse": lambda w: w[::-1]}


def run(directory: Path, task: str, method: str, steps: int, lr: float, seed: int) -> dict[str, object]:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(directory)
    rng = random.Random(7)
    words = sorted({"".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(4)) for _ in range(30)})[:30]
    examples = [
        Example(tokenizer(f"{w}:").input_ids, tokenizer(TASKS[task](w), add_special_tokens=False).input_ids)
        for w in words
    ]
    if method == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        model = add_lora(model, 16, 32)
    freeze_router(model)
    losses: list[dict] = []
    started = time.perf_counter()
    Trainer(model, examples, TrainPlan(lr, 8, steps, 20, 10**9, seed, 1)).run(
        losses.append, lambda *a: None, Path(tempfile.mkdtemp())
    )
    elapsed = time.perf_counter() - started
    inner = model.get_base_model() if method == "lora" else model
    engine = Engine(inner.eval(), max_rows=30)
    handles = [
        engine.submit(Request(f"r{i}", tuple(e.prompt), SamplingParams(max_new_tokens=16, seed=1), frozenset({1})))
        for i, e in enumerate(examples)
    ]
    engine.run_until_idle()
    exact = sum(h.wait(0).token_ids == e.response for h, e in zip(handles, examples, strict=True))
    first = sum(m["diffusion_loss"] for m in losses[:10]) / 10
    last = sum(m["diffusion_loss"] for m in losses[-10:]) / 10
    return {
        "task": task,
        "method": method,
        "steps": steps,
        "learning_rate": lr,
        "seed": seed,
        "diffusion_loss_first10": round(first, 4),
        "diffusion_loss_last10": round(last, 4),
        "loss_drop": round(1 - last / first, 3),
        "steps_per_s": round(steps / elapsed, 2),
        "tokens_per_s": round(sum(m["tokens_per_s"] for m in losses) / len(losses), 1),
        "exact": f"{exact}/{len(examples)}",
        "meets_targets": 1 - last / first >= 0.8 and exact >= 0.9 * len(examples),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--tasks", default="copy,reverse")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--canvas", type=int, default=16)
    parser.add_argument("--base", default=None, help="a model directory to fine-tune (default: a tiny random one)")
    parser.add_argument("--lora-lr", type=float, default=1e-2)
    parser.add_argument("--full-lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=1, help="the training seed (data order, corruption)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp()) / "tiny"
    directory = Path(args.base) if args.base else make_tiny(scratch, seed=0, canvas_length=args.canvas)
    for task in args.tasks.split(","):
        for method in args.methods.split(","):
            lr = args.full_lr if method == "full" else args.lora_lr
            print(json.dumps(run(directory, task, method, args.steps, lr, args.seed)), flush=True)


if __name__ == "__main__":
    main()
