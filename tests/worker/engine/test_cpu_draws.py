"""The vectorised Exp(1) draws equal ATen's `exponential_` bit for bit, generator state included, and
fall back to ATen's kernel where they do not apply."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.engine import cpu_draws


def _pair(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(1,), (3, 7), (64, 4096), (2, cpu_draws._CHUNK + 1), (5, 3, 1000)])
def test_the_draws_equal_atens_bit_for_bit(shape: tuple[int, ...]) -> None:
    for seed in range(3):
        mine, theirs = _pair(seed)
        torch.empty(11).random_(generator=mine)  # a generator mid-way through its Mersenne Twister block
        torch.empty(11).random_(generator=theirs)
        for _ in range(2):  # and again from where the first draw left it
            expected = torch.empty(shape).exponential_(1.0, generator=theirs)
            got = cpu_draws.exponential_(torch.empty(shape), mine)
            assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
            assert torch.equal(mine.get_state(), theirs.get_state())


def test_values_near_a_rounding_midpoint_take_the_c_librarys_log1p() -> None:
    """The rare doubles that round to float32 differently under two log1p implementations: planted
    here, every one of them gets ATen's value (the C library's log1p), the others numpy's."""
    u = np.array([k * 2.0**-53 for k in (1, 3, 12345, 2**40 + 7, 2**52, 2**53 - 1)] + [0.3, 0.71], dtype=np.float64)
    d = -np.log1p(-u)
    wrong = d.copy()
    wrong[:3] = np.nextafter(wrong[:3], np.inf)  # off by one ULP, as another log1p may be
    near = d.view(np.int64).copy()  # put the last two right on a float32 midpoint
    near[-2:] = (near[-2:] & ~np.int64(cpu_draws._LOW29)) | cpu_draws._HALF
    planted = near.view(np.float64)
    wrong[-2:] = planted[-2:]
    cpu_draws._recompute_near_midpoints(u, wrong, np.empty(len(u), dtype=np.int64))
    assert wrong[-2] == -1.0 * math.log1p(-0.3) and wrong[-1] == -1.0 * math.log1p(-0.71)
    assert np.array_equal(wrong[:3], np.nextafter(d[:3], np.inf))  # far from a midpoint: left alone


@pytest.mark.parametrize(
    "out",
    [torch.empty(8, 9, dtype=torch.float64), torch.empty(9, 8).t(), torch.empty(4, 5, dtype=torch.bfloat16)],
    ids=["float64", "non-contiguous", "bfloat16"],
)
def test_anything_else_takes_atens_kernel(out: torch.Tensor) -> None:
    mine, theirs = _pair(7)
    got = cpu_draws.exponential_(out, mine)
    assert torch.equal(got, torch.empty_like(out).exponential_(1.0, generator=theirs))
    assert torch.equal(mine.get_state(), theirs.get_state())


def test_a_torch_that_draws_differently_is_caught_by_the_self_check(monkeypatch) -> None:
    monkeypatch.setattr(cpu_draws, "_LOW53", (1 << 52) - 1)  # a different algorithm than ATen's
    assert not cpu_draws._self_check()
    monkeypatch.undo()
    assert cpu_draws._self_check()


def test_the_draws_benchmark_runs_and_reports_the_same_bits() -> None:
    root = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, "bench/draws.py", "--shapes", "3x7,64x33", "--repeats", "1"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()[1:]]
    assert [r["shape"] for r in rows] == ["3x7", "64x33"] and all(r["same_bits"] for r in rows)
