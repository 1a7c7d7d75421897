"""The fine-tuning loop: steps over a seeded data order, AdamW with warmup and cosine decay, gradient
clipping, checkpoints that restore everything a resumed run needs to continue exactly, and metrics.

It knows torch, transformers and peft; not Celery or the database (the task hands in callbacks).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.training.objective import (
    Corrupted,
    Example,
    LossParts,
    batch_loss,
    corrupt,
    corrupt_block,
    example_loss,
    group_loss,
)

Metrics = dict[str, Any]
Stream = Callable[[int], Any]  # step -> a batch with .full (B, S) and .start (e.g. demo_model.stream.Batch)


class TrainingCanceled(Exception):
    """Raised between steps when the job must stop."""


@dataclass
class TrainPlan:
    learning_rate: float
    batch_size: int
    total_steps: int
    warmup_steps: int
    checkpoint_every: int
    seed: int
    eos: int
    encoder_loss_weight: float = 1.0  # the recipe's weight of the encoder's next-token term
    bf16_autocast: bool = False  # fp32 master weights, bf16 matmuls (the recipe's precision; CUDA only)


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # per step, of this run (a resumed run: its own)
    eval_loss: float | None = None


def plan_steps(examples: int, batch_size: int, epochs: int | None, max_steps: int | None) -> int:
    if max_steps:
        return max_steps
    return max(1, (epochs or 3) * math.ceil(examples / batch_size))


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def freeze_router(model: Any) -> None:
    """The recipe keeps the router frozen (reference digest 4.5)."""
    for name, param in model.named_parameters():
        if ".router." in name:
            param.requires_grad_(False)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, eight_bit: bool) -> torch.optim.Optimizer:
    if eight_bit:  # bitsandbytes' 8-bit AdamW (GPU only)
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=(0.95, 0.99), weight_decay=1e-4)
    fused = bool(params) and all(p.is_cuda for p in params)  # one kernel per step instead of one per tensor
    return torch.optim.AdamW(params, lr=lr, betas=(0.95, 0.99), weight_decay=1e-4, fused=fused or None)


def lr_lambda(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to `floor` x the peak (the recipe decays 1.5e-4 to 1.5e-5)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The examples of a step: a seeded permutation per epoch, so a resumed run sees the same order."""
    flat = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(flat + len(out), n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[offset])
    return out


@torch.no_grad()
def evaluate(model: Any, examples: list[Example], seed: int, eos: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    losses = [example_loss(model, ex, generator, False, eos).diffusion for ex in examples]
    return sum(losses) / len(losses)


class Trainer:
    def __init__(
        self,
        model: Any,
        examples: list[Example],
        plan: TrainPlan,
        *,
        eight_bit_optimizer: bool = False,
        validation: list[Example] | None = None,
        stream: Stream | None = None,
    ) -> None:
        """`examples` are drawn in a seeded order; or, with `stream`, each step trains on `stream(step)`."""
        self.model, self.examples, self.plan, self.validation = model, examples, plan, validation or []
        self.stream = stream
        self.params = trainable_parameters(model)
        self.optimizer = make_optimizer(self.params, plan.learning_rate, eight_bit_optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(plan.warmup_steps, plan.total_steps)
        )
        self.generator = torch.Generator().manual_seed(plan.seed)  # corruption: rates, positions, noise
        self.coins = random.Random(plan.seed)  # self-conditioning coin per example
        self.step = 0
        self.device_type = self.params[0].device.type if self.params else "cpu"
        self.bf16 = plan.bf16_autocast and self.device_type == "cuda"

    def retarget(self, total_steps: int) -> None:
        """Change the run's length (a time-budgeted run learns its speed first); the schedule follows."""
        self.plan.total_steps = total_steps
        self.scheduler.lr_lambdas[0] = lr_lambda(self.plan.warmup_steps, total_steps)

    # ---- checkpoints -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        named = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return {
            "step": self.step,
            "params": named,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "coins": self.coins.getstate(),
        }

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint
        return path

    def restore(self, path: Path) -> bool:
        """Continue from a checkpoint; False (nothing restored) for one a finished run stripped of its
        optimizer state (prune_optimizer_state): such a run starts afresh."""
        state = torch.load(path, weights_only=True)
        if "optimizer" not in state:
            return False
        missing = self.model.load_state_dict(state["params"], strict=False)
        assert not [k for k in state["params"] if k in missing.unexpected_keys], "checkpoint does not fit the model"
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.coins.setstate(state["coins"])
        self.step = state["step"]
        return True

    # ---- the loop ------------------------------------------------------------------------------------

    def groups(self, picked: list[int]) -> list[tuple[list[Corrupted], list[bool]]]:
        """Corrupt the step's examples (one draw after another, so the random streams do not depend on
        batching), then group those that share length and block offset into one forward pass each."""
        config, vocab = self.config(), self.vocab()
        grouped: dict[tuple[int, int], tuple[list[Corrupted], list[bool]]] = {}
        for index in picked:
            coin = self.coins.random() < 0.5
            item = corrupt(self.examples[index], self.generator, config.canvas_length, vocab, self.plan.eos)
            items, coins = grouped.setdefault((item.full.numel(), item.start), ([], []))
            items.append(item)
            coins.append(coin)
        return list(grouped.values())

    def config(self) -> Any:
        return self.model.get_base_model().config if hasattr(self.model, "get_base_model") else self.model.config

    def vocab(self) -> int:
        return self.config().get_text_config(decoder=True).vocab_size

    def stream_parts(self) -> list[tuple[LossParts, int]]:
        """One same-shape batch from the stream, corrupted in one draw."""
        batch = self.stream(self.step)
        canvas = self.config().canvas_length
        noisy = corrupt_block(batch.full[:, batch.start : batch.start + canvas], self.generator, self.vocab())
        coins = torch.rand(batch.full.shape[0], generator=self.generator) < 0.5
        with self.autocast():
            parts = batch_loss(self.model, batch.full, noisy, batch.start, coins, self.plan.encoder_loss_weight)
        return [(parts, batch.full.shape[0])]

    def group_parts(self, items: list[Corrupted], coins: list[bool]) -> LossParts:
        with self.autocast():
            return group_loss(self.model, items, coins, self.plan.encoder_loss_weight)

    def autocast(self) -> torch.autocast:
        """bf16 autocast around the forward passes when the plan asks for it and the model is on a GPU
        (backward runs outside, as PyTorch recommends)."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self) -> Metrics:
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        diffusion = encoder = 0.0
        tokens = 0
        if self.stream is not None:
            parts_list = self.stream_parts()
        else:
            picked = batch_indices(self.step, len(self.examples), self.plan.batch_size, self.plan.seed)
            groups = self.groups(picked)  # every draw first, then one forward and backward per group
            parts_list = ((self.group_parts(items, coins), len(picked)) for items, coins in groups)
        for parts, count in parts_list:
            (parts.total / count).backward()
            diffusion += parts.diffusion / count
            encoder += parts.encoder / count
            tokens += parts.tokens
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        elapsed = time.perf_counter() - started
        return {
            "step": self.step,
            "loss": round(diffusion + encoder, 5),
            "diffusion_loss": round(diffusion, 5),
            "encoder_loss": round(encoder, 5),
            "learning_rate": lr,
            "tokens_per_s": round(tokens / elapsed, 1),
        }

    def run(
        self,
        on_metrics: Callable[[Metrics], None],
        on_checkpoint: Callable[[int, float, Path], None],
        checkpoint_dir: Path,
        should_stop: Callable[[], bool] = lambda: False,
        keep_checkpoints: int = 2,
    ) -> TrainResult:
        """Train to the plan's last step. Every `checkpoint_every` steps a checkpoint is saved (and
        reported) and only the newest `keep_checkpoints` stay on disk; once the run ends, those lose their
        optimizer state (they were kept to resume; a finished run does not resume)."""
        result = TrainResult(steps=self.step)
        while self.step < self.plan.total_steps:
            if should_stop():
                raise TrainingCanceled()
            metrics = self.train_step()
            result.losses.append(metrics["loss"])
            last = self.step == self.plan.total_steps
            if self.step % self.plan.checkpoint_every == 0 or last:
                if self.validation:
                    metrics["eval_loss"] = round(
                        evaluate(self.model, self.validation, self.plan.seed, self.plan.eos), 5
                    )
                    result.eval_loss = metrics["eval_loss"]
                if not last:
                    path = self.save(checkpoint_dir / f"step_{self.step:07d}.pt")
                    prune_checkpoints(checkpoint_dir, keep_checkpoints)
                    on_checkpoint(self.step, metrics["loss"], path)
            on_metrics(metrics)
        prune_optimizer_state(checkpoint_dir)
        result.steps = self.step
        self.model.eval()
        return result


def checkpoint_files(directory: Path) -> list[Path]:
    """The checkpoints saved in `directory`, oldest first (their names sort by step)."""
    return sorted(directory.glob("step_*.pt"))


def prune_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints in `directory` (keep 0: none is deleted). Returns
    the deleted paths."""
    doomed = checkpoint_files(directory)[:-keep] if keep > 0 else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def prune_optimizer_state(directory: Path) -> None:
    """Rewrite each checkpoint in `directory` with its trained parameters and step only: the optimizer's
    moments (twice the trained parameters with AdamW) serve a resume, which a finished run never needs."""
    for path in checkpoint_files(directory):
        state = torch.load(path, weights_only=True)
        if "optimizer" not in state:
            continue
        tmp = path.with_suffix(".tmp")
        torch.save({"step": state["step"], "params": state["params"]}, tmp)
        tmp.replace(path)
