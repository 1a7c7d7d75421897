"""`canvas train demo`: train the demo model from scratch with the fine-tuning code (same objective, same
Trainer) on the seeded tasks of `worker.training.demo_model.tasks`, then write it in Hugging Face layout with its
tokenizer and a model card. Knows torch and transformers; not the service."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.tiny import BOS_ID, EOS_ID, PAD_ID, build_tokenizer, tiny_config
from worker.training.demo_model.stream import DemoStream, sudoku_pool
from worker.training.demo_model.tasks import TRAINING_SEED
from worker.training.trainer import Trainer, TrainPlan


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the shipped model (written into its card)."""

    hidden: int = 192
    layers: int = 8
    canvas_length: int = 96
    steps: int = 8000  # at most; `minutes` can end the run sooner (the card records the steps taken)
    batch_size: int = 256
    learning_rate: float = 1.5e-3
    warmup_steps: int = 100
    seed: int = TRAINING_SEED
    sudoku: int = 20000  # generated puzzles in the pool (each drawn through a random symmetry)
    sudoku_share: float = 0.6  # of the steps
    minutes: float = 0.0  # a time budget for the training steps (0: run all `steps`)
    init_from: str = ""  # continue from this model's weights (a fresh optimizer and warmup), or from scratch
    encoder_loss_weight: float = 0.1  # the released recipe has 1.0; a Sudoku prompt's next token is noise
    bf16: bool = True  # bf16 autocast on a GPU (fp32 weights; the recipe's precision); no effect on the CPU


def build_model(recipe: Recipe) -> Any:
    torch.manual_seed(recipe.seed)
    if recipe.init_from:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(recipe.init_from, dtype=torch.float32)
    else:
        config = tiny_config(recipe.canvas_length, max_positions=512, hidden=recipe.hidden, layers=recipe.layers)
        model = DiffusionGemmaForBlockDiffusion(config)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = EOS_ID, PAD_ID, BOS_ID
    for name, param in model.named_parameters():  # the router stays as initialised, as in fine-tuning
        param.requires_grad_(".router." not in name and "vision" not in name)
    return model


def stream(recipe: Recipe, tokenizer: Any) -> DemoStream:
    workers = min(16, os.cpu_count() or 1)
    pool = sudoku_pool(recipe.sudoku, recipe.seed, workers)
    return DemoStream(
        tokenizer,
        pool,
        canvas=recipe.canvas_length,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        sudoku_share=recipe.sudoku_share,
    )


class Budget:
    """Caps the run's steps to fit `minutes`, from the step time measured since the previous check (the
    first steps include warm-up, so later checks see the settled speed)."""

    CHECKS = (20, 200, 500, 1000, 2000, 5000)

    def __init__(self, recipe: Recipe, trainer: Trainer) -> None:
        self.recipe, self.trainer, self.started = recipe, trainer, time.monotonic()
        self.last = (0, self.started)

    def check(self, step: int) -> None:
        if not self.recipe.minutes or step not in self.CHECKS:
            return
        now = time.monotonic()
        per_step = (now - self.last[1]) / (step - self.last[0])
        self.last = (step, now)
        fits = step + int((self.recipe.minutes * 60 - (now - self.started)) / per_step)
        self.trainer.retarget(max(step + 1, min(self.recipe.steps, fits)))


def save(out: Path, model: Any, tokenizer: Any) -> None:
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size="10MB")  # shards small enough to copy anywhere
    tokenizer.save_pretrained(out)
    model.train()


def train_demo(out: Path, recipe: Recipe, log: Any = sys.stdout, save_every: int = 500) -> dict[str, Any]:
    """Train and save; returns the figures written into the card."""
    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    started = time.monotonic()
    data = stream(recipe, tokenizer)
    made = f"{data.pool[0].shape[0]} Sudoku puzzles generated in {time.monotonic() - started:.0f} s"
    print(made, file=log, flush=True)
    torch.set_float32_matmul_precision("high")  # TF32 on a GPU
    model = build_model(recipe).to("cuda" if torch.cuda.is_available() else "cpu")
    plan = TrainPlan(
        recipe.learning_rate,
        recipe.batch_size,
        recipe.steps,
        recipe.warmup_steps,
        10**9,
        recipe.seed,
        EOS_ID,
        encoder_loss_weight=recipe.encoder_loss_weight,
        bf16_autocast=recipe.bf16,
    )
    trainer = Trainer(model, [], plan, stream=data)
    budget = Budget(recipe, trainer)
    losses: list[float] = []

    def report(metrics: dict[str, Any]) -> None:
        losses.append(metrics["diffusion_loss"])
        budget.check(metrics["step"])
        if metrics["step"] % 25 == 0 or metrics["step"] == plan.total_steps:
            elapsed = time.monotonic() - started
            recent = sum(losses[-25:]) / len(losses[-25:])
            print(f"step {metrics['step']}/{plan.total_steps} loss {recent:.4f} {elapsed:.0f} s", file=log, flush=True)

    def report_and_save(metrics: dict[str, Any]) -> None:
        report(metrics)
        if metrics["step"] % save_every == 0:  # a usable model on disk while training goes on
            save(out, model, tokenizer)

    trainer.run(report_and_save, lambda *_: None, out / ".checkpoints")
    save(out, model, tokenizer)
    model.eval()
    figures = {
        "train_minutes": round((time.monotonic() - started) / 60, 1),
        "steps": trainer.step,
        "final_diffusion_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "machine": machine(),
    }
    card = {"name": out.name, "made_by": "canvas train demo", "recipe": asdict(recipe), "figures": figures}
    (out / "canvas_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(model_card(out.name, recipe, figures))
    return figures


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def flag(field: str, value: Any) -> str:
    """The CLI flag that sets a Recipe field: `--batch-size 256`, `--bf16` / `--no-bf16`."""
    name = field.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def model_card(name: str, recipe: Recipe, figures: dict[str, Any]) -> str:
    """The model card: what the model is, how it was made (the exact command), and its figures."""
    exact = asdict(recipe) | {"steps": figures["steps"]}  # the steps taken, so no time budget is needed
    flags = " ".join(flag(k, v) for k, v in exact.items() if k not in ("seed", "canvas_length", "minutes") and v != "")
    return f"""# {name}

A small DiffusionGemma ({figures["parameters"]:,} parameters: hidden {recipe.hidden}, {recipe.layers} layers,
4 experts, a {recipe.canvas_length}-token canvas, byte-level tokenizer) trained from scratch by Canvas's own
fine-tuning code (the block-diffusion objective of the released recipe, `worker/training/`) on seeded
synthetic tasks (`worker/training/demo_model/tasks.py`): Sudoku puzzles with unique solutions (40-50, 30-39 and
25-29 givens; the prompt states the puzzle as `sudoku: <81 chars>`; a pool of generated puzzles, each
drawn through a random symmetry of the grid), `reverse: WORD`, `sort: N N N`,
`add: A+B`, `fill: SENTENCE WITH ___` and `say: TEXT` (sentences, for infill jobs).

Made with:

    canvas train demo --out models/{name} {flags}

Training: {figures["train_minutes"]} minutes on {figures["machine"]}; final diffusion loss
{figures["final_diffusion_loss"]}. Evaluation: see docs/benchmarks.md (`bench/sudoku.py`).
"""
