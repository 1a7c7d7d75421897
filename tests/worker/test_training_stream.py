"""The Trainer on a stream of same-shape batches (how the demo model trains): a run stopped and resumed
from its checkpoint ends exactly where an uninterrupted run ends, and a retargeted run follows its new
schedule. Tiny real model, CPU."""

from __future__ import annotations

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.demo_model.stream import DemoStream, sudoku_pool
from worker.tiny import EOS_ID, build_tokenizer, tiny_config
from worker.training.trainer import Trainer, TrainPlan


def make(stream: DemoStream, total: int = 6) -> Trainer:
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(96, max_positions=256, hidden=32, layers=2))
    return Trainer(model, [], TrainPlan(3e-3, 4, total, 2, 3, 7, EOS_ID), stream=stream)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_a_resumed_stream_run_ends_where_an_uninterrupted_one_does(tmp_path) -> None:
    stream = DemoStream(build_tokenizer(), sudoku_pool(250, seed=0), canvas=96, batch_size=4, seed=0)
    straight = make(stream)
    losses = [straight.train_step()["loss"] for _ in range(6)]

    first = make(stream)
    head = [first.train_step()["loss"] for _ in range(3)]
    path = first.save(tmp_path / "step3.pt")
    resumed = make(stream)
    resumed.restore(path)
    tail = [resumed.train_step()["loss"] for _ in range(3)]

    assert head + tail == losses  # same batches, same corruption, same optimizer state
    final, expected = params(resumed), params(straight)
    assert all(torch.equal(final[n], expected[n]) for n in expected)
    assert losses[0] != losses[-1]  # it trains


def test_retarget_changes_the_schedule_length() -> None:
    stream = DemoStream(build_tokenizer(), sudoku_pool(250, seed=0), canvas=96, batch_size=2, seed=0)
    trainer = make(stream, total=100)
    trainer.train_step()
    trainer.retarget(4)
    rates = [trainer.train_step()["learning_rate"] for _ in range(3)]
    assert trainer.plan.total_steps == 4
    # warmup ends at step 2; halfway through a 4-step schedule's decay, not 1% into a 100-step one
    assert rates[:2] == [3e-3, 3e-3] and abs(rates[2] - 0.55 * 3e-3) < 1e-9
