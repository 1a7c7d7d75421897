"""Which of the demo model's tensors nf4 hurts: KL(fp32 || nf4) and argmax agreement when only some tensors
are quantized, at block size 64 or 32, or with tensors under a size kept in fp32.

    .venv/bin/python bench/quantized_sensitivity.py                  # every choice, tuning seed 20000
    .venv/bin/python bench/quantized_sensitivity.py "all" "under 16K kept"

Each choice quantizes and dequantizes the chosen weights in fp32 (bitsandbytes nf4, the codec's flat runs)
and puts them back into the fp32 model: the numbers the serving path computes with on the CPU (`real`,
the checkpoint's own modules, checks that). Inputs: tuning-seed prompts of every text task and 16 Sudoku
puzzles per level (easy, medium); the canvas is the pair's answer with a share r of its positions replaced
by random tokens (r = 1: a first denoising step; r = 0.3: late in denoising); KL and agreement are
averaged over the replaced positions. The decoder runs without a self-conditioning signal, so the
self-conditioning MLP is not exercised here.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository (run as a script)

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from worker.quantized.codecs import bnb
from worker.quantized.layout import quantize_model, targets
from worker.training.demo_model.tasks import TEXT_TASKS, held_out

RATIOS = (1.0, 0.6, 0.3)
Select = Callable[[str], bool]
Case = tuple[str, float, torch.Tensor, torch.Tensor, torch.Tensor]  # kind, r, prompt, canvas, replaced


def every(_name: str) -> bool:
    return True


def matching(pattern: str) -> Select:
    return lambda name: re.search(pattern, name) is not None


def but(pattern: str) -> Select:
    return lambda name: re.search(pattern, name) is None


KV, QO = r"self_attn\.(k|v)_proj", r"self_attn\.(q|o)_proj"
CHOICES: dict[str, tuple[Select, int, int]] = {  # name -> (which weights, block size, min weights)
    "all": (every, 64, 0),
    "all, block 32": (every, 32, 0),
    "experts only": (matching(r"\.experts\."), 64, 0),
    "attention q, o only": (matching(QO), 64, 0),
    "attention k, v only": (matching(KV), 64, 0),
    "dense MLP only": (matching(r"layers\.\d+\.mlp\."), 64, 0),
    "all but k, v": (but(KV), 64, 0),
    "under 16K kept": (every, 64, 16_384),
    "under 16K kept, block 32": (every, 32, 16_384),
    "under 64K kept": (every, 64, 65_536),
}


def roundtrip(weight: torch.Tensor, block: int) -> torch.Tensor:
    """nf4 quantize -> dequantize in fp32, as one flat run (as codecs.NF4 stores it)."""
    functional = bnb()
    flat = weight.detach().float().contiguous().reshape(-1)
    packed, state = functional.quantize_4bit(flat, blocksize=block, compress_statistics=False, quant_type="nf4")
    return functional.dequantize_4bit(packed, state).reshape(weight.shape)


def fake_quantized(path: str, select: Select, block: int, min_weights: int) -> tuple[Any, int]:
    """The model with its chosen weights through nf4 and back, and how many weights that is."""
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(path).eval()
    count = 0
    for target in targets(model, min_weights):
        module = model.get_submodule(target.paths[0])
        for weight in target.shapes:
            tensor = getattr(module, weight)
            if select(f"{target.paths[0]}.{weight}"):
                tensor.data.copy_(roundtrip(tensor.data, block))
                count += tensor.numel()
    return model, count


def inputs(tokenizer: Any, canvas: int, vocab: int, seed: int) -> list[Case]:
    """(kind, r, prompt ids (1, P), canvas (C,), replaced positions (C,)) per pair and ratio."""
    pairs = [("text", p, a) for task in TEXT_TASKS for p, a in held_out(task, 8, seed=seed)]
    pairs += [("sudoku", p, a) for lv in ("easy", "medium") for p, a in held_out("sudoku", 16, seed=seed, level=lv)]
    out = []
    for i, (kind, prompt, answer) in enumerate(pairs):
        ids = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        clean = torch.tensor((ids + [tokenizer.pad_token_id] * canvas)[:canvas])
        for j, ratio in enumerate(RATIOS):
            generator = torch.Generator().manual_seed(seed + 10 * i + j)
            noise = torch.randint(0, vocab, (canvas,), generator=generator)
            replaced = torch.rand(canvas, generator=generator) < ratio
            out.append(
                (
                    kind,
                    ratio,
                    torch.tensor([tokenizer(prompt).input_ids]),
                    torch.where(replaced, noise, clean),
                    replaced,
                )
            )
    return out


def log_probs(model: Any, prompt: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    return model(input_ids=prompt, decoder_input_ids=canvas[None]).logits.float()[0].log_softmax(-1)  # (C, V)


def score(
    model: Any, cases: list[Case], references: list[torch.Tensor]
) -> dict[tuple[str, float], tuple[float, float]]:
    """(kind, r) -> (mean KL, argmax agreement) over replaced positions."""
    sums: dict[tuple[str, float], list[float]] = {}
    for (kind, ratio, prompt, canvas, replaced), ref in zip(cases, references, strict=True):
        got = log_probs(model, prompt, canvas)
        kl = (ref.exp() * (ref - got)).sum(-1)[replaced]
        agree = (ref.argmax(-1) == got.argmax(-1))[replaced]
        row = sums.setdefault((kind, ratio), [0.0, 0.0, 0.0])
        row[0], row[1], row[2] = row[0] + kl.sum().item(), row[1] + agree.sum().item(), row[2] + replaced.sum().item()
    return {key: (kl / n, agree / n) for key, (kl, agree, n) in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("choices", nargs="*", help=f"among: real, {', '.join(CHOICES)} (default: all of them)")
    parser.add_argument("--model", default="models/canvas-demo")
    parser.add_argument("--seed", type=int, default=20_000, help="prompt seed (20000: a tuning set)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    reference = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = reference.config.get_text_config().vocab_size
    cases = inputs(tokenizer, reference.config.canvas_length, vocab, args.seed)
    references = [log_probs(reference, prompt, canvas) for _, _, prompt, canvas, _ in cases]
    keys = [(kind, r) for kind in ("sudoku", "text") for r in RATIOS]
    print(f"model {args.model}, seed {args.seed}: {len(cases) // len(RATIOS)} pairs; KL / argmax agreement")
    print("| nf4 on | weights quantized | " + " | ".join(f"{k} r={r}" for k, r in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name in args.choices or ["real", *CHOICES]:
        if name == "real":  # the quantized modules themselves, as served (the default size rule)
            model = quantize_model(DiffusionGemmaForBlockDiffusion.from_pretrained(args.model).eval(), "nf4")
            count = sum(t.numel() for t in model.buffers() if t.dtype == torch.uint8) * 2
            count += sum(p.numel() for p in model.parameters() if p.dtype == torch.uint8) * 2
        else:
            model, count = fake_quantized(args.model, *CHOICES[name])
        scores = score(model, cases, references)
        cells = " | ".join(f"{scores[k][0]:.4f} / {scores[k][1]:.1%}" for k in keys)
        print(f"| {name} | {count:,} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
