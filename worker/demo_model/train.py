"""`canvas train demo`: train the demo model from scratch with the fine-tuning code (same objective, same
Trainer) on the seeded tasks of `worker.demo_model.tasks`, then write it in Hugging Face layout with its
tokenizer and a model card. Knows torch and transformers; not the service."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.demo_model.tasks import TRAINING_SEED, Mix, training_pairs
from worker.tiny import BOS_ID, EOS_ID, PAD_ID, build_tokenizer, tiny_config
from worker.training.objective import Example
from worker.training.trainer import Trainer, TrainPlan


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the shipped model (written into its card)."""

    hidden: int = 96
    layers: int = 4
    canvas_length: int = 96
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = TRAINING_SEED
    sudoku: int = 3000
    text_each: int = 800


def build_model(recipe: Recipe) -> Any:
    torch.manual_seed(recipe.seed)
    config = tiny_config(recipe.canvas_length, max_positions=512, hidden=recipe.hidden, layers=recipe.layers)
    model = DiffusionGemmaForBlockDiffusion(config)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = EOS_ID, PAD_ID, BOS_ID
    for name, param in model.named_parameters():  # the router stays as initialised, as in fine-tuning
        param.requires_grad_(".router." not in name and "vision" not in name)
    return model


def examples(recipe: Recipe, tokenizer: Any) -> list[Example]:
    pairs = training_pairs(Mix(recipe.sudoku, recipe.text_each), recipe.seed)
    return [
        Example(tokenizer(prompt).input_ids, tokenizer(completion, add_special_tokens=False).input_ids)
        for prompt, completion in pairs
    ]


def save(out: Path, model: Any, tokenizer: Any) -> None:
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.train()


def train_demo(out: Path, recipe: Recipe, log: Any = sys.stdout, save_every: int = 100) -> dict[str, Any]:
    """Train and save; returns the figures written into the card."""
    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    started = time.monotonic()
    data = examples(recipe, tokenizer)
    print(f"{len(data)} training examples built in {time.monotonic() - started:.0f} s", file=log, flush=True)
    model = build_model(recipe).to("cuda" if torch.cuda.is_available() else "cpu")
    plan = TrainPlan(
        recipe.learning_rate, recipe.batch_size, recipe.steps, recipe.warmup_steps, 10**9, recipe.seed, EOS_ID
    )
    trainer = Trainer(model, data, plan)
    losses: list[float] = []

    def report(metrics: dict[str, Any]) -> None:
        losses.append(metrics["diffusion_loss"])
        if metrics["step"] % 25 == 0 or metrics["step"] == recipe.steps:
            elapsed = time.monotonic() - started
            recent = sum(losses[-25:]) / len(losses[-25:])
            print(f"step {metrics['step']}/{recipe.steps} loss {recent:.4f} {elapsed:.0f} s", file=log, flush=True)

    def report_and_save(metrics: dict[str, Any]) -> None:
        report(metrics)
        if metrics["step"] % save_every == 0:  # a usable model on disk while training goes on
            save(out, model, tokenizer)

    trainer.run(report_and_save, lambda *_: None, out / ".checkpoints")
    save(out, model, tokenizer)
    model.eval()
    figures = {
        "train_minutes": round((time.monotonic() - started) / 60, 1),
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


def model_card(name: str, recipe: Recipe, figures: dict[str, Any]) -> str:
    """The model card: what the model is, how it was made (the exact command), and its figures."""
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in asdict(recipe).items()
        if k not in ("seed", "warmup_steps", "canvas_length")
    )
    return f"""# {name}

A small DiffusionGemma ({figures["parameters"]:,} parameters: hidden {recipe.hidden}, {recipe.layers} layers,
4 experts, a {recipe.canvas_length}-token canvas, byte-level tokenizer) trained from scratch by Canvas's own
fine-tuning code (the block-diffusion objective of the released recipe, `worker/training/`) on seeded
synthetic tasks (`worker/demo_model/tasks.py`): Sudoku puzzles with unique solutions (40-50, 30-39 and
25-29 givens; the prompt states the puzzle as `sudoku: <81 chars>`), `reverse: WORD`, `sort: N N N`,
`add: A+B`, `fill: SENTENCE WITH ___` and `say: TEXT` (sentences, for infill jobs).

Made with:

    canvas train demo --out models/{name} {flags}

Training: {figures["train_minutes"]} minutes on {figures["machine"]}; final diffusion loss
{figures["final_diffusion_loss"]}. Evaluation: see docs/benchmarks.md (`bench/sudoku.py`).
"""
