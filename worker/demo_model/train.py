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

    hidden: int = 128
    layers: int = 4
    canvas_length: int = 96
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    seed: int = TRAINING_SEED
    sudoku: int = 6000
    text_each: int = 2000


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
    model = build_model(recipe)
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
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    card = {"name": out.name, "made_by": "canvas train demo", "recipe": asdict(recipe), "figures": figures}
    (out / "canvas_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return figures
