"""Benchmark: exact mode's Exp(1) draws on the CPU, ATen's `exponential_` against the vector passes of
`worker/engine/cpu_draws.py` (which make the same numbers), on one thread, per row of a given shape.
Prints one JSON line per shape with the mean milliseconds of each over `--repeats` calls, and whether the
two drew the same bits. Numbers, not assertions.

  .venv/bin/python bench/draws.py                       # the small architecture's row, and the demo model's
  .venv/bin/python bench/draws.py --shapes 256x262144   # one row of the released model (256 MiB)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository (run as a script)

from worker.engine import cpu_draws


def mean_ms(fn, repeats: int) -> float:
    fn()  # warm-up (the first call also runs the draws' one-time check)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def bench_shape(shape: tuple[int, ...], repeats: int) -> dict:
    out = torch.empty(shape)
    aten, ours = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    same = torch.equal(
        torch.empty(shape).exponential_(1.0, generator=aten).view(torch.int32),
        cpu_draws.exponential_(torch.empty(shape), ours).view(torch.int32),
    )
    aten_ms = mean_ms(lambda: out.exponential_(1.0, generator=aten), repeats)
    ours_ms = mean_ms(lambda: cpu_draws.exponential_(out, ours), repeats)
    words = torch.empty(out.numel(), dtype=torch.int64)
    words_ms = mean_ms(lambda: words.random_(generator=ours), repeats)
    return {
        "shape": "x".join(map(str, shape)),
        "aten_ms": round(aten_ms, 2),
        "vector_ms": round(ours_ms, 2),
        "of_which_random_words_ms": round(words_ms, 2),
        "speedup": round(aten_ms / ours_ms, 2),
        "same_bits": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="64x4096,96x262", help="rows' (canvas x vocabulary), comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a pool worker draws: one core
    print(json.dumps({"torch": torch.__version__, "threads": 1}))
    for text in args.shapes.split(","):
        shape = tuple(int(n) for n in text.split("x"))
        print(json.dumps(bench_shape(shape, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
