"""Benchmark: torch's intra-op threads from the main thread and from a second thread (where a worker's
engine loop runs). The same `generate()` calls on the demo model with two torch threads, in one of three
placements, each its own process:

- `main`: in the main thread;
- `second`: in a second thread, after the main thread itself ran the same calls with two threads (its
  team of OpenMP threads stays alive, as in a process whose main thread once ran a parallel op);
- `second-alone`: in a second thread, the main thread kept at one torch thread throughout.

Prints the wall time of each repeat and the process's voluntary context switches during it (getrusage).
libgomp stops spinning between parallel regions once the process has more OpenMP threads than cores, so
a placement that leaves two teams of threads alive makes every small op wake a sleeping thread.

  .venv/bin/python bench/threads.py                 # all three placements, 3 repeats each
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEMENTS = ("main", "second", "second-alone")


def measure(placement: str, repeats: int, count: int, model_dir: str) -> list[tuple[float, int]]:
    import torch

    torch.set_num_threads(1 if placement == "second-alone" else 2)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from converging import generate_kwargs, prompts_of
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from worker.engine import SamplingParams

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(model_dir).eval()
    prompts = [p for _, p in prompts_of(AutoTokenizer.from_pretrained(model_dir), count)]
    params = [SamplingParams(max_new_tokens=model.config.canvas_length, seed=i) for i in range(len(prompts))]

    def once(out: list) -> None:
        torch.set_num_threads(2)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with torch.inference_mode():
            for prompt, p in zip(prompts, params, strict=True):
                torch.manual_seed(p.seed)
                model.generate(torch.tensor([prompt]), **generate_kwargs(p))
        after = resource.getrusage(resource.RUSAGE_SELF)
        out.append((round(time.perf_counter() - start, 2), after.ru_nvcsw - before.ru_nvcsw))

    def run() -> tuple[float, int]:
        out: list = []
        if placement == "main":
            once(out)
        else:
            thread = threading.Thread(target=once, args=(out,))
            thread.start()
            thread.join()
        return out[0]

    if placement == "second":  # the warm-up in the main thread: its team of two threads stays alive
        once([])
    else:
        run()
    return [run() for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--placement", choices=PLACEMENTS, help="one placement in this process (else each in its own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=2, help="held-out prompts per task (5 tasks)")
    parser.add_argument("--model", default=str(ROOT / "models/canvas-demo"))
    args = parser.parse_args()
    if args.placement:
        runs = measure(args.placement, args.repeats, args.count, args.model)
        seconds, switches = [s for s, _ in runs], [c for _, c in runs]
        print(json.dumps({"placement": args.placement, "seconds": seconds, "voluntary_switches": switches}))
        return
    for placement in PLACEMENTS:
        cmd = [sys.executable, __file__, "--placement", placement, "--repeats", str(args.repeats)]
        cmd += ["--count", str(args.count), "--model", args.model]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 else done.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
