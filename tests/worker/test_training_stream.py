"""The Trainer on a stream of same-shape batches (how the demo model trains): a run stopped and resumed
from its checkpoint ends exactly where an uninterrupted run ends, and a retargeted run follows its new
schedule. Tiny real model, CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.tiny import EOS_ID, build_tokenizer, tiny_config
from worker.training.demo_model.stream import DemoStream, sudoku_pool
from worker.training.trainer import Trainer, TrainPlan


@pytest.fixture(scope="module")
def pool() -> tuple[torch.Tensor, torch.Tensor]:
    """250 generated Sudoku puzzles (a few seconds to make), shared by this module's streams."""
    return sudoku_pool(250, seed=0)


def make(stream: DemoStream, total: int = 6) -> Trainer:
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(96, max_positions=256, hidden=32, layers=2))
    return Trainer(model, [], TrainPlan(3e-3, 4, total, 2, 3, 7, EOS_ID), stream=stream)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_a_resumed_stream_run_ends_where_an_uninterrupted_one_does(tmp_path, pool) -> None:
    stream = DemoStream(build_tokenizer(), pool, canvas=96, batch_size=4, seed=0)
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


def test_retarget_changes_the_schedule_length(pool) -> None:
    stream = DemoStream(build_tokenizer(), pool, canvas=96, batch_size=2, seed=0)
    trainer = make(stream, total=100)
    trainer.train_step()
    trainer.retarget(4)
    rates = [trainer.train_step()["learning_rate"] for _ in range(3)]
    assert trainer.plan.total_steps == 4
    # warmup ends at step 2; halfway through a 4-step schedule's decay, not 1% into a 100-step one
    assert rates[:2] == [3e-3, 3e-3] and abs(rates[2] - 0.55 * 3e-3) < 1e-9


def test_the_encoder_loss_weight_scales_only_the_encoder_terms_gradient(pool) -> None:
    from worker.training.objective import batch_loss, corrupt_block

    stream = DemoStream(build_tokenizer(), pool, canvas=96, batch_size=4, seed=0)
    batch = stream.build(0)
    noisy = corrupt_block(batch.full[:, batch.start : batch.start + 96], torch.Generator().manual_seed(1), 262)
    model = make(stream).model
    coins = torch.tensor([True, False, True, False])

    def gradient(weight: float) -> tuple[torch.Tensor, float, float]:
        model.zero_grad()
        torch.manual_seed(0)
        parts = batch_loss(model, batch.full, noisy, batch.start, coins, weight)
        parts.total.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert abs(parts.total.item() - (parts.diffusion + weight * parts.encoder)) < 1e-3
        return grad, parts.diffusion, parts.encoder

    (g0, d0, e0), (g1, d1, e1), (half, dh, eh) = gradient(0.0), gradient(1.0), gradient(0.5)
    assert (d0, e0) == (d1, e1) == (dh, eh)  # the reported terms are unweighted
    assert torch.allclose(half, (g0 + g1) / 2, atol=1e-6)  # the total is linear in the weight
    assert not torch.allclose(g0, g1)  # and the encoder term moves the weights
