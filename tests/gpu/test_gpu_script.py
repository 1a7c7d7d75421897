"""The GPU run's correctness script, run here on whatever device there is (the CPU in CI), so the
script a GPU session runs once is known to work before it is run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_checks_script_passes_on_this_device() -> None:
    result = subprocess.run(
        [sys.executable, "bench/gpu_checks.py"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 3


def test_engine_benchmark_runs_on_a_small_config() -> None:
    cmd = [
        sys.executable,
        "bench/engine.py",
        "--arch",
        "small",
        "--requests",
        "2",
        "--concurrency",
        "2",
        "--steps",
        "2",
        "--prompt",
        "8",
        "--skip-static",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "engine, 2 rows, arriving together" in result.stdout
    assert '"outputs_equal_to_generate"' in result.stdout  # the exactness column is reported
