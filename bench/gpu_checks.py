"""Engine correctness on a GPU with a tiny random model: batching, pinned positions, per-row seeds.
Self-contained (torch + transformers + worker/engine). Prints one line per check and exits non-zero
if one fails. On a CPU it runs the same checks (that is how it is tested before a GPU run)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.tiny import tiny_config


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config()).to(device).eval()
    requests = [
        Request(
            f"r{i}",
            tuple(range(2, 5 + 7 * i)),
            SamplingParams(max_new_tokens=40 + 10 * i, max_denoising_steps=8, seed=i),
            frozenset({1}),
        )
        for i in range(8)
    ]
    failures = 0

    def run(reqs: list[Request], rows: int) -> list[list[int]]:
        engine = Engine(model, max_rows=rows)
        handles = [engine.submit(r) for r in reqs]
        engine.run_until_idle()
        return [h.wait(0).token_ids for h in handles]

    def check(name: str, ok: bool) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name} ({device})", flush=True)

    alone = [run([r], 1)[0] for r in requests]
    batched = run(requests, 8)
    same = sum(a == b for a, b in zip(alone, batched, strict=True))
    check(f"all requests finish batched; {same}/8 equal to running alone", all(batched))
    pinned = {0: 80, 7: 81, 33: 82}
    digits = tuple(range(54, 64))
    req = Request(
        "p", (2, 70), SamplingParams(max_new_tokens=40, seed=3), frozenset(), pinned, {o: digits for o in range(8, 30)}
    )
    out = run([req], 1)[0]
    check("pinned positions kept", all(out[o] == t for o, t in pinned.items()))
    check("constrained positions obey", all(out[o] in digits for o in range(8, 30)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
