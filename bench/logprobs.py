"""Benchmark: what asking for log-probabilities costs the engine. The same requests run with `logprobs`
off, 0 (the returned tokens only) and k alternatives; prints one JSON line per setting (ms per step,
tokens/s, the cost against off) and whether every setting returned the same tokens (it must: logprobs only
read the step's distribution). Numbers, not assertions.

  python bench/logprobs.py --arch small --rows 8 --steps 16 --canvases 2

Needs only torch and transformers (and this repository's worker/engine).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for worker.engine
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arch import CANVAS, build
from engine import fixed_params, sync

from worker.engine import Engine, Request


def run(model, prompts: list[list[int]], params: list, rows: int, k: int | None, device: str) -> dict:
    """Every request at once in one engine of `rows` rows; the wall time, the steps and the outputs."""
    engine = Engine(model, max_rows=rows)
    requests = [Request(f"r{i}", tuple(p), q, logprobs=k) for i, (p, q) in enumerate(zip(prompts, params, strict=True))]
    sync(device)
    start = time.perf_counter()
    handles = [engine.submit(r) for r in requests]
    engine.run_until_idle()
    sync(device)
    wall = time.perf_counter() - start
    results = [h.wait(0) for h in handles]
    tokens = sum(len(r.token_ids) for r in results)
    ticks = engine.stats["ticks"]
    return {
        "logprobs": "off" if k is None else k,
        "wall_s": round(wall, 3),
        "ms_per_tick": round(1000 * wall / ticks, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "outputs": [r.token_ids for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="small", choices=["small", "26b"])
    parser.add_argument("--rows", type=int, default=8, help="requests, all denoised side by side")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--canvases", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--ks", default="off,0,5,20", help="settings to run: off or a number of alternatives")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is reported")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build(args.arch, device, dtype)
    vocab = model.config.text_config.vocab_size
    machine = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(json.dumps({"arch": args.arch, "device": machine, "vocab": vocab, "rows": args.rows, "steps": args.steps}))
    rng = random.Random(1)
    prompts = [[rng.randrange(10, vocab) for _ in range(args.prompt)] for _ in range(args.rows)]
    params = [fixed_params(args.steps, args.canvases, CANVAS[args.arch], seed=i) for i in range(args.rows)]
    run(model, prompts[:2], params[:2], 2, 5, device)  # warm-up
    baseline, reference = None, None
    for setting in args.ks.split(","):
        k = None if setting == "off" else int(setting)
        best = min(
            (run(model, prompts, params, args.rows, k, device) for _ in range(args.repeats)), key=lambda r: r["wall_s"]
        )
        outputs = best.pop("outputs")
        reference = reference or outputs
        baseline = baseline or best["ms_per_tick"]
        best["same_tokens_as_first"] = outputs == reference
        best["cost_vs_first"] = round(best["ms_per_tick"] / baseline, 3)
        print(json.dumps(best), flush=True)


if __name__ == "__main__":
    main()
