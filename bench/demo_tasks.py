"""Accuracy of a model on the demo model's held-out text tasks, through the engine (exact answers).

.venv/bin/python bench/demo_tasks.py --model models/canvas-demo --count 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository (run as a script)

from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.training.demo_model.tasks import TEXT_TASKS, held_out


def answers(model, tokenizer, prompts: list[str], max_rows: int = 64) -> list[str]:
    engine = Engine(model, max_rows=max_rows)
    eos = frozenset({tokenizer.eos_token_id})
    handles = [
        engine.submit(Request(f"t{i}", tuple(tokenizer(p).input_ids), SamplingParams(max_new_tokens=32, seed=i), eos))
        for i, p in enumerate(prompts)
    ]
    engine.run_until_idle()
    return [tokenizer.decode(h.wait(0).token_ids, skip_special_tokens=True) for h in handles]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/canvas-demo")
    parser.add_argument("--count", type=int, default=100, help="held-out prompts per task")
    args = parser.parse_args()
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    for task in [t for t in TEXT_TASKS if t != "say"]:
        pairs = held_out(task, args.count)
        got = answers(model, tokenizer, [p for p, _ in pairs])
        right = sum(g == a for g, (_, a) in zip(got, pairs, strict=True))
        example = f"{pairs[0][0].strip()!r} -> {got[0]!r} (right: {pairs[0][1]!r})"
        print(f"{task:8} {right}/{len(pairs)} exact   e.g. {example}", flush=True)


if __name__ == "__main__":
    main()
