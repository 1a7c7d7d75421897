"""A tiny model quantized once per session (nf4), for the tests that load or serve it."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.quantized.checkpoint import quantize_checkpoint


@pytest.fixture(scope="session")
def nf4_tiny_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("quantized") / "tiny-nf4"
    quantize_checkpoint(tiny_model_dir, dst, "nf4", device="cpu")
    return dst
