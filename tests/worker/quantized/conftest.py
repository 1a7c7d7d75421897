"""A tiny model quantized once per session (nf4), for the tests that load or serve it. Every tensor of the
tiny model is under layout.MIN_WEIGHTS, so the fixture quantizes them all (min_weights=0): the tests run the
quantized modules, not a model the size rule left in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.quantized.checkpoint import quantize_checkpoint


@pytest.fixture(scope="session")
def nf4_tiny_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("quantized") / "tiny-nf4"
    quantize_checkpoint(tiny_model_dir, dst, "nf4", device="cpu", min_weights=0)
    return dst
