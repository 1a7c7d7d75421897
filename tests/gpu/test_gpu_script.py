"""The GPU run's scripts (bench/gpu.sh's phases), run here on whatever device there is (the CPU in CI),
so what a GPU session runs once is known to work before it is run. Some run in a process of their own as
the GPU run starts them, the others as `__main__` in this one (`run_here`)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_checks_script_passes_on_this_device() -> None:
    result = subprocess.run(
        [sys.executable, "bench/gpu_checks.py"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 14 and "FAIL" not in result.stdout
    assert result.stdout.count("PASS graphs") == 9  # issue 17 item 3: bucketed passes, uncaptured on the CPU
    assert "SKIP a failed capture" in result.stdout  # forced on a GPU only


def run_here(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """A bench script run as `python3 bench/x.py` runs it, but in this process (its imports are already
    made here, which saves a new interpreter's ten seconds on a slow CPU): its exit code and output. torch's
    process-wide settings a script may change (grad mode, threads, default dtype and seed) are restored
    after it, so later tests in this process see them as they were."""
    monkeypatch.setattr(sys, "argv", list(args))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a script's sys.path.insert stays in it
    grad, threads, dtype, rng = (
        torch.is_grad_enabled(),
        torch.get_num_threads(),
        torch.get_default_dtype(),
        torch.get_rng_state(),
    )
    try:
        runpy.run_path(str(ROOT / args[0]), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_rng_state(rng)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_engine_benchmark_runs_on_a_small_config(monkeypatch, capsys) -> None:
    args = [
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
    code, out = run_here(monkeypatch, capsys, "bench/engine.py", *args)
    assert code == 0, out[-3000:]
    assert "engine, 2 rows, arriving together" in out
    assert '"outputs_equal_to_generate"' in out  # the exactness column is reported
    assert '"graphs_captured": 0' in out and "graphs off" in out  # nothing captured on a CPU


def test_sampler_benchmark_runs_on_the_small_config(monkeypatch, capsys) -> None:
    code, out = run_here(monkeypatch, capsys, "bench/sampler.py", "--arch", "small", "--rows", "1", "--repeats", "1")
    assert code == 0, out[-3000:]
    assert '"mode": "exact"' in out and '"mode": "fast"' in out


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """A bench script as the GPU run starts it: `python3 bench/x.py` from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_demo_model_evaluations_run_as_scripts(tmp_path, monkeypatch, capsys) -> None:
    from worker.tiny import make_tiny

    model = str(make_tiny(tmp_path / "m", canvas_length=96))
    sudoku = run_script("bench/sudoku.py", "--model", model, "--puzzles", "2", "--levels", "easy", "--budget", "4")
    assert sudoku.returncode == 0, sudoku.stderr[-3000:]
    assert "easy" in sudoku.stdout and "left_to_right" in sudoku.stdout
    code, tasks = run_here(monkeypatch, capsys, "bench/demo_tasks.py", "--model", model, "--count", "2")
    assert code == 0 and tasks.count("exact") == 4  # reverse, sort, add, fill
    code, converging = run_here(
        monkeypatch, capsys, "bench/converging.py", "--model", model, "--count", "1", "--concurrency", "2"
    )
    assert code == 0 and "| generate, one at a time |" in converging and "| engine, 2 rows |" in converging


def test_qlora_script_runs_unquantized_on_the_cpu_and_refuses_4bit_without_a_gpu(monkeypatch, capsys) -> None:
    small = run_script("bench/qlora.py", "--small", "--quantization", "none", "--steps", "3")
    assert small.returncode == 0, small.stderr[-3000:]
    assert '"steps": 3' in small.stdout and "SUMMARY" in small.stdout
    code, refused = run_here(monkeypatch, capsys, "bench/qlora.py", "--small")
    if code != 2:  # a CUDA machine with bitsandbytes runs it instead
        assert code == 0, refused[-3000:]
    else:
        assert "needs a CUDA GPU" in refused


def test_quantized_benchmark_runs_on_the_tiny_config(monkeypatch, capsys) -> None:
    """bench/quantized.py's whole path (streaming quantization, loading, the engine) on the tests' tiny
    model; the 26B run on a GPU takes the same path."""
    args = ["--arch", "tiny", "--methods", "nf4,fp8", "--rows", "1", "--steps", "2"]
    code, out = run_here(monkeypatch, capsys, "bench/quantized.py", *args)
    assert code == 0, out[-3000:]
    assert "| nf4 |" in out and "| base |" in out
    assert "refused: fp8 weights need a CUDA GPU" in out or "cuda" in out.lower()
