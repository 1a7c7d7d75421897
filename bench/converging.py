"""Benchmark: requests that converge (the released stopping criterion on), the engine against `generate()`.

`bench/engine.py` runs every step (random weights never settle); real traffic stops long before the step
budget, so this one uses a trained model (`models/canvas-demo` by default) and its held-out prompts: each
text task and easy Sudoku puzzles as plain generation requests, one canvas each, the released sampler's
defaults (48 steps at most, stability 1, confidence 0.005). Prints one JSON line per scenario and a table:
tokens per forward (each side's own count: generate()'s `tokens_per_forward`, the engine's
`EngineResult.tokens_per_forward`, both tokens before the end of the answer over the request's denoising
steps, averaged over requests), mean steps, canvas tokens/s (canvas positions settled per second, the work
both sides do) and the engine's multiple of sequential generate().

  .venv/bin/python bench/converging.py --count 8 --concurrency 1,16 --engine-thread
  python3 bench/converging.py --model models/canvas-demo --count 16 --concurrency 1,8,32   # a GPU

Needs torch, transformers and this repository (worker.engine, the demo model's task generators).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository (run as a script)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import generate_kwargs, sync
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.training.demo_model.tasks import TEXT_TASKS, held_out


def prompts_of(tokenizer: Any, count: int) -> list[tuple[str, list[int]]]:
    """(task, prompt ids): `count` held-out prompts of each text task but `say`, and `count` easy puzzles."""
    out = [(task, p) for task in TEXT_TASKS if task != "say" for p, _ in held_out(task, count)]
    out += [("sudoku", p) for p, _ in held_out("sudoku", count, level="easy")]
    return [(task, tokenizer(text).input_ids) for task, text in out]


@torch.inference_mode()
def bench_generate(model: Any, prompts: list[list[int]], params: list[SamplingParams], device: str) -> dict:
    per_forward, start = [], time.perf_counter()
    for prompt, p in zip(prompts, params, strict=True):
        torch.manual_seed(p.seed)
        out = model.generate(torch.tensor([prompt], device=device), **generate_kwargs(p))
        per_forward.append(float(out.tokens_per_forward[0]))
    sync(device)
    return {"scenario": "generate, one at a time", "wall_s": time.perf_counter() - start, "tpf": per_forward}


def bench_engine(model: Any, prompts: list[list[int]], params: list[SamplingParams], rows: int, thread: bool) -> dict:
    engine = Engine(model, max_rows=rows)
    eos = frozenset({model.config.text_config.eos_token_id})
    start = time.perf_counter()
    if thread:  # as the worker runs it: the loop in its own thread
        engine.start()
    pairs = enumerate(zip(prompts, params, strict=True))
    handles = [engine.submit(Request(f"r{i}", tuple(prompt), p, eos)) for i, (prompt, p) in pairs]
    if not thread:
        engine.run_until_idle()
    results = [h.wait() for h in handles]
    wall = time.perf_counter() - start
    if thread:
        engine.stop()
    how = f"engine, {rows} rows" + (", loop in its own thread" if thread else "")
    return {
        "scenario": how,
        "wall_s": wall,
        "tpf": [r.tokens_per_forward for r in results],
        "steps": [r.denoising_steps for r in results],
    }


def report(result: dict, canvas: int, requests: int, baseline_wall: float | None) -> dict:
    out = {
        "scenario": result["scenario"],
        "requests": requests,
        "wall_s": round(result["wall_s"], 2),
        "canvas_tokens_per_s": round(canvas * requests / result["wall_s"], 1),
        "tokens_per_forward": round(statistics.mean(result["tpf"]), 2),
    }
    if "steps" in result:
        out["mean_steps"] = round(statistics.mean(result["steps"]), 1)
    if baseline_wall:
        out["x_generate"] = round(baseline_wall / result["wall_s"], 2)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/canvas-demo")
    parser.add_argument("--count", type=int, default=8, help="held-out prompts per task (5 tasks)")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--engine-thread", action="store_true", help="the engine loop in its own thread")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    canvas = model.config.canvas_length
    tasks = prompts_of(tokenizer, args.count)
    prompts = [ids for _task, ids in tasks]
    params = [SamplingParams(max_new_tokens=canvas, seed=i) for i in range(len(prompts))]
    machine = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(json.dumps({"model": args.model, "device": machine, "requests": len(prompts), "canvas": canvas}), flush=True)
    bench_generate(model, prompts[:1], params[:1], device)  # warm-up
    rows = [report(bench_generate(model, prompts, params, device), canvas, len(prompts), None)]
    baseline = rows[0]["wall_s"]
    for n in (int(c) for c in args.concurrency.split(",")):
        bench_engine(model, prompts[:2], params[:2], n, args.engine_thread)  # warm-up
        rows.append(report(bench_engine(model, prompts, params, n, args.engine_thread), canvas, len(prompts), baseline))
    print("\n| scenario | tokens/forward | mean steps | canvas tokens/s | x generate |\n|---|---|---|---|---|")
    for r in rows:
        steps, times = r.get("mean_steps", ""), r.get("x_generate", "")
        print(f"| {r['scenario']} | {r['tokens_per_forward']} | {steps} | {r['canvas_tokens_per_s']} | {times} |")


if __name__ == "__main__":
    main()
