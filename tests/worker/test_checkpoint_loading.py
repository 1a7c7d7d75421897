"""A checkpoint file is read as tensors and plain data only (torch.load(weights_only=True)): a file that
someone with access to the training volume replaced cannot run code in the worker. Tiny real model, CPU."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.tiny import EOS_ID, tiny_config
from worker.training.objective import Example
from worker.training.trainer import Trainer, TrainPlan

RAN: list[str] = []


def _record(marker: str) -> str:
    RAN.append(marker)
    return marker


class Payload:
    def __reduce__(self):  # unpickling calls _record: what an attacker's file would do with os.system
        return (_record, ("ran",))


def make() -> Trainer:
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(16, max_positions=128, hidden=32, layers=2))
    examples = [Example(prompt=[2, 10 + i], response=[20 + i, 30 + i, EOS_ID]) for i in range(4)]
    return Trainer(model, examples, TrainPlan(1e-3, 2, 4, 1, 2, 0, EOS_ID))


def test_a_real_checkpoint_resumes_and_a_pickled_payload_does_not_run(tmp_path: Path) -> None:
    trainer = make()
    saved = trainer.save(tmp_path / "step_0000001.pt")
    resumed = make()
    assert resumed.restore(saved) is True and resumed.step == trainer.step

    forged = tmp_path / "step_0000002.pt"
    torch.save({**trainer.state(), "extra": Payload()}, forged)
    with pytest.raises(pickle.UnpicklingError):
        make().restore(forged)
    assert RAN == []
