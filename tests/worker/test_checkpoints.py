"""Checkpoints stay bounded: a run keeps its newest N on disk, and a finished run's lose their optimizer
state (a finished run never resumes). Tiny real model, CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.tiny import EOS_ID, tiny_config
from worker.training.objective import Example
from worker.training.trainer import Trainer, TrainPlan, checkpoint_files


def make(total: int) -> Trainer:
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(16, max_positions=128, hidden=32, layers=2))
    examples = [Example(prompt=[2, 10 + i], response=[20 + i, 30 + i, EOS_ID]) for i in range(4)]
    return Trainer(model, examples, TrainPlan(1e-3, 2, total, 1, 2, 0, EOS_ID))


def test_a_run_keeps_its_newest_checkpoints_and_a_finished_one_drops_their_optimizer_state(tmp_path: Path) -> None:
    on_disk: list[list[str]] = []

    def saved(step: int, _loss: float, path: Path) -> None:
        assert path.exists() and "optimizer" in torch.load(path, weights_only=True)  # resumable while it runs
        on_disk.append([p.name for p in checkpoint_files(tmp_path)])

    trainer = make(total=9)
    trainer.run(lambda _m: None, saved, tmp_path, keep_checkpoints=2)
    assert on_disk == [
        ["step_0000002.pt"],
        ["step_0000002.pt", "step_0000004.pt"],
        ["step_0000004.pt", "step_0000006.pt"],
        ["step_0000006.pt", "step_0000008.pt"],
    ]
    kept = checkpoint_files(tmp_path)
    states = [torch.load(p, weights_only=True) for p in kept]
    assert [s["step"] for s in states] == [6, 8]
    assert all(set(s) == {"step", "params"} for s in states)  # the optimizer's moments are gone
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(states[-1]["params"]) == trained

    fresh = make(total=9)
    assert fresh.restore(kept[-1]) is False and fresh.step == 0  # nothing to resume: a rerun starts afresh
