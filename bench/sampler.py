"""Benchmark: the sampler step of one tile of rows, exact mode against fast mode, with the engine's own
code (`Engine._sample`, `Engine._sample_fast`) on a random-weight model of the architecture cut to one
layer (the step depends on the vocabulary, the hidden size and the canvas only). Prints one JSON line per
row count and mode: ms per step (median of `--repeats`), and on a GPU the step's peak memory.

The exact step's random draws (one Exp(1) per vocabulary entry, from each row's generator) are timed
apart: the CPU engine draws them in threads while the decoder pass runs, a GPU engine just before the
step. On a CUDA device with Triton it also checks the Triton kernel against the torch pass 1 on the same
logits (equal samples and argmaxes, the entropy to rounding) and times both.

  python bench/sampler.py --arch small --rows 1,16
  python bench/sampler.py --arch 26b --rows 1,8          # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arch import CANVAS, build

from worker.engine import Engine, Request, SamplingParams
from worker.engine.fast_sampler import noise_key, position_keys, vocabulary_stats
from worker.engine.kv import to_device
from worker.engine.sampler import draw_noise


def timed(device: str, fn: Any, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` runs after one warm-up."""
    return measured(device, fn, repeats)[0]


def measured(device: str, fn: Any, repeats: int) -> tuple[float, float]:
    """Median wall and process CPU milliseconds of fn() over `repeats` runs after one warm-up. On a
    shared CPU the CPU time is the steadier figure: other processes' load stretches the wall time."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return round(statistics.median(walls), 3), round(statistics.median(cpus), 3)


def peak_mib(device: str, fn: Any) -> float | None:
    """The step's own peak: memory allocated during fn() beyond what was allocated before it."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - before) / 2**20, 1)


def ready_rows(model: Any, rows: int) -> Engine:
    """An engine whose `rows` requests have their canvases started (one tick run), none converging."""
    engine = Engine(model, max_rows=rows)
    C = engine.runner.canvas_length
    for i in range(rows):
        params = SamplingParams(max_new_tokens=C, max_denoising_steps=1000, stability_threshold=1000, seed=i)
        engine.submit(Request(f"r{i}", (2, 3, 4, 5), params))
    engine.step()
    assert len(engine.rows) == rows and all(row.step > 0 for row in engine.rows)
    return engine


def bench_rows(model: Any, rows: int, device: str, repeats: int) -> list[dict[str, Any]]:
    engine = ready_rows(model, rows)
    r = engine.runner
    slots = [row.slot for row in engine.rows]
    index = to_device(slots, r.device)
    generators = [row.generator for row in engine.rows]
    hidden = torch.randn(rows, r.canvas_length, r.hidden_size, dtype=r.dtype, device=r.device)
    C, V = r.canvas_length, r.vocab_size

    def exact() -> None:
        engine._sample(hidden, index, slots, draw_noise(generators, C, V, r.device), engine.rows)

    def fast() -> None:
        engine._sample_fast(hidden, index, slots, engine.rows)

    base = {"rows": rows, "vocab": V, "canvas": C, "hidden": r.hidden_size, "device": device}
    out = []
    for _ in range(2):  # the modes alternate, so both meet the same load
        draws = measured(device, lambda: draw_noise(generators, C, V, r.device), repeats)
        for mode, fn in (("exact", exact), ("fast", fast)):
            wall, cpu = measured(device, fn, repeats)
            line = {**base, "mode": mode, "ms": wall, "cpu_ms": cpu, "peak_mib": peak_mib(device, fn)}
            if mode == "exact":
                line |= {"of_which_draws_ms": draws[0], "of_which_draws_cpu_ms": draws[1]}
            out.append(line)
    return out


def triton_check(model: Any, rows: int, repeats: int) -> dict[str, Any]:
    """The Triton pass 1 against the torch pass 1 on the model's logits of random hidden states."""
    from worker.engine import fast_triton

    engine = ready_rows(model, rows)
    r = engine.runner
    hidden = torch.randn(rows, r.canvas_length, r.hidden_size, dtype=r.dtype, device=r.device)
    logits = r.head(hidden) * 40  # random weights give near-uniform logits; spread them as a trained head does
    t = torch.linspace(0.4, 0.8, rows, device=r.device)
    keys = torch.tensor([noise_key(i, 0) for i in range(rows)], device=r.device)
    position = position_keys(keys, torch.zeros(rows, dtype=torch.int32, device=r.device), r.canvas_length)
    args = (logits, r.softcap, t, None, position)
    mine = fast_triton.vocabulary_stats(*args)
    theirs = vocabulary_stats(*args, fast_triton.BLOCK)
    return {
        "check": "triton pass 1 vs torch pass 1",
        "rows": rows,
        "samples_equal": round(float((mine.sample == theirs.sample).float().mean()), 5),
        "argmax_equal": round(float((mine.argmax == theirs.argmax).float().mean()), 5),
        "entropy_max_abs_diff": float((mine.entropy() - theirs.entropy()).abs().max()),
        "triton_ms": timed("cuda", lambda: fast_triton.vocabulary_stats(*args), repeats),
        "torch_ms": timed("cuda", lambda: vocabulary_stats(*args, fast_triton.BLOCK), repeats),
    }


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small", choices=["small", "26b"])
    parser.add_argument("--rows", default="1,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build(args.arch, device, dtype, num_hidden_layers=1)
    threads = torch.get_num_threads()
    print(
        f"arch {args.arch} (one layer), canvas {CANVAS[args.arch]}, {device}, {dtype}, {threads} threads, "
        f"torch {torch.__version__}"
    )
    for rows in (int(x) for x in args.rows.split(",")):
        for line in bench_rows(model, rows, device, args.repeats):
            print(json.dumps(line), flush=True)
    if device == "cuda":
        from worker.engine import fast_triton

        if not fast_triton.available():
            print("SKIP triton check: Triton is not installed")
        else:
            check = triton_check(model, max(int(x) for x in args.rows.split(",")), args.repeats)
            ok = check["samples_equal"] >= 0.999 and check["argmax_equal"] >= 0.999
            print(f"{'PASS' if ok else 'FAIL'} {json.dumps(check)}", flush=True)


if __name__ == "__main__":
    main()
