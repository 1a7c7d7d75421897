"""Quantized serving: memory, speed and quantizing cost of nf4/int8/fp8 against the base dtype (bf16 on a
GPU, fp32 on the CPU), and the quality cost on the demo model.

    .venv/bin/python bench/quantized.py --arch small                          # the CPU figures
    .venv/bin/python bench/quantized.py --arch 26b --methods nf4,fp8 --rows 1,8  # one GPU (H200: ~6 min)
    .venv/bin/python bench/quantized.py --quality --model models/canvas-demo --puzzles 100
    .venv/bin/python bench/quantized.py --paper --arch 26b                     # checkpoint bytes, no weights

Speed and memory: a random-weight model of the architecture (bench/arch.py) is quantized in a streaming way
(each tensor made on the device, quantized and written alone, as `canvas models quantize` does with a
checkpoint's tensors: the 26B model never exists in bf16 on the host), loaded back through the serving
loader (meta device, each tensor read once onto the device) and run by the engine for a fixed number of
denoising steps at each row count. Prints quantizing time and peak host memory, load time, weight bytes,
peak device memory (GPU: torch's peak allocation; CPU: the process's peak resident memory) and
milliseconds per decoder pass. The base row builds the same random model directly in the base dtype.
`--arch tiny` (the tests' model) checks the script in seconds.

Quality (`--quality`): the demo model in fp32 against its quantized checkpoints: per-position KL(fp32 ||
quantized) and argmax agreement of the first denoising step (a random canvas) and of the last (fp32's
answer as the canvas) over held-out prompts of every task; and held-out Sudoku (easy, medium: the model
alone, Sudoku jobs' sampler) solved by each, with the paired difference from fp32 (same puzzles, same
seeds) and its standard error. `--min-weights 0,16384` runs each method at each size rule (layout.py);
`--seed 20000` draws a tuning set instead of the held-out one.

Bytes on paper (`--paper`): what `canvas models quantize` would write for the architecture (bf16 source),
from the model built on the meta device and each codec's stored shapes: no weights made, seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository (run as a script)

import torch

from bench.arch import ARCHS, CANVAS
from worker.engine import Engine, Request, SamplingParams
from worker.quantized.checkpoint import meta_model, quantize_checkpoint, write_quantized
from worker.quantized.codecs import codec
from worker.quantized.hardware import UnsupportedQuantization
from worker.quantized.layout import MIN_WEIGHTS, aliases, set_tensor, targets
from worker.quantized.loader import load_quantized, move_buffers


class Peak:
    """Peak resident memory of this process (sampled every 5 ms) and, on CUDA, torch's peak allocation."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.host, self._stop = device, 0, threading.Event()

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.host = rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.host = max(self.host, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.host = max(self.host, rss())
        self.device_bytes = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else self.host


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_config(arch: str, directory: Path) -> Path:
    """config.json of `arch` (bench/arch.py's, or the tests' tiny one) in `directory`."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaTextConfig

    from worker.tiny import tiny_config

    if arch == "tiny":
        config = tiny_config(canvas_length=32)
    else:
        text = DiffusionGemmaTextConfig(**ARCHS[arch])
        config = DiffusionGemmaConfig(text_config=text, vision_config=None, canvas_length=CANVAS[arch])
    config.save_pretrained(directory)
    return directory


def build_base(src: Path, device: str, dtype: torch.dtype) -> Any:
    """The unquantized model of `src`'s config with the same random tensors, each made once on `device`."""
    model = meta_model(src)
    names = aliases(model)
    for name, tensor in random_tensors(src, device, dtype):
        set_tensor(model, names[name], tensor)
    move_buffers(model, torch.device(device))
    model.generation_config.eos_token_id = None
    return model.eval()


def random_tensors(src: Path, device: str, dtype: torch.dtype, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Each stored tensor of the architecture once (tied ones once), made on `device` when asked for:
    normal(0, 0.02) matrices, ones elsewhere (as bench/arch.py builds them)."""
    model = meta_model(src)
    generator = torch.Generator(device=device).manual_seed(seed)
    persistent = set(model.state_dict())
    named = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if n in persistent)]
    for name, meta in named:
        tensor = torch.empty(meta.shape, dtype=dtype, device=device)
        tensor.normal_(0.0, 0.02, generator=generator) if meta.dim() >= 2 else tensor.fill_(1.0)
        yield name, tensor


def time_engine(model: Any, rows: int, steps: int, device: torch.device) -> tuple[float, int]:
    """(ms per decoder pass, peak device bytes) with `rows` requests denoising `steps` steps each."""
    canvas = model.config.canvas_length
    never_stable = {"stability_threshold": steps + 1, "confidence_threshold": 1e-9}
    warm = Engine(model, max_rows=rows)
    warm.submit(Request("warm", tuple(range(2, 18)), SamplingParams(max_new_tokens=canvas, max_denoising_steps=2)))
    warm.run_until_idle()
    del warm
    engine = Engine(model, max_rows=rows)
    for row in range(rows):
        params = SamplingParams(max_new_tokens=canvas, max_denoising_steps=steps, seed=row, **never_stable)
        engine.submit(Request(f"r{row}", tuple(range(2, 18)), params))
    with Peak(device) as peak:
        started = time.perf_counter()
        engine.run_until_idle()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return 1000 * elapsed / max(1, engine.stats["decoder_passes"]), peak.device_bytes


def weight_bytes(model: Any) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def bench_method(method: str, args: argparse.Namespace, src: Path, device: torch.device, dtype: torch.dtype) -> dict:
    row: dict[str, Any] = {"method": method}
    with Peak(device) as peak:
        started = time.perf_counter()
        if method == "base":
            model = build_base(src, str(device), dtype)
        else:
            dst = Path(args.work) / f"q-{method}"
            record = write_quantized(src, random_tensors(src, str(device), dtype), dst, method)
            row["quantize_s"], row["quantize_host_peak_gib"] = time.perf_counter() - started, peak.host / 2**30
            row["disk_gib"] = record["weight_bytes"] / 2**30
            started = time.perf_counter()
            try:
                model = load_quantized(dst, device, dtype)
            except UnsupportedQuantization as exc:
                shutil.rmtree(dst)
                return {**row, "refused": str(exc).split(";")[0]}
            model.generation_config.eos_token_id = None  # random weights: every canvas in full
            shutil.rmtree(dst)
    row["load_s"] = time.perf_counter() - started
    row["weights_gib"] = weight_bytes(model) / 2**30
    row["after_load_gib"] = (torch.cuda.memory_allocated() if device.type == "cuda" else rss()) / 2**30
    for rows in args.rows:
        ms, peak_bytes = time_engine(model, rows, args.steps, device)
        row[f"ms_per_pass_{rows}"], row[f"peak_gib_{rows}"] = ms, peak_bytes / 2**30
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def print_rows(rows: list[dict], counts: list[int]) -> None:
    head = ["method", "quantize_s", "quantize_host_peak_gib", "disk_gib", "load_s", "weights_gib"]
    head += [f"{k}_{n}" for n in counts for k in ("peak_gib", "ms_per_pass")]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        cells = [row.get(h, "") for h in head]
        text = [f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells]
        print("| " + " | ".join(text) + " |" + (f" refused: {row['refused']}" if "refused" in row else ""), flush=True)


def speed(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.set_grad_enabled(False)
    src = write_config(args.arch, Path(args.work) / "src")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"arch {args.arch} on {name}, base dtype {dtype}, {args.steps} steps per request, rows {args.rows}")
    rows = []
    for method in ["base", *args.methods]:
        rows.append(bench_method(method, args, src, device, dtype))
        print(json.dumps(rows[-1]), flush=True)
    print_rows(rows, args.rows)


def logits_pair(reference: Any, quantized: Any, prompt: list[int], canvas: torch.Tensor) -> dict[str, float]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        ref = reference(input_ids=ids, decoder_input_ids=canvas[None]).logits.float()
        got = quantized(input_ids=ids, decoder_input_ids=canvas[None]).logits.float()
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none")
    return {"kl": kl.sum(-1).mean().item(), "agree": (got.argmax(-1) == ref.argmax(-1)).float().mean().item()}


def solved(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_rows: int = 64) -> list[bool]:
    """Whether each held-out puzzle is solved by a Sudoku job's constraints and sampler with `model` alone
    (no rule mask: the benchmarks' model figures); puzzle i draws with seed i, whatever the model."""
    from shared.job_kinds.sudoku import SUDOKU_PARAMS, SudokuPlan
    from worker.job_kinds.sudoku import constrain, grid_of
    from worker.training.demo_model.tasks import sudoku_prompt

    digits = [tokenizer(d, add_special_tokens=False).input_ids[0] for d in "123456789"]
    engine = Engine(model, max_rows=max_rows)
    plans, handles = [], []
    for i, (prompt, _solution) in enumerate(pairs):
        plan = SudokuPlan(grid=prompt.removeprefix("sudoku: ").strip(), digit_ids=digits, rules=False)
        params = SamplingParams(max_new_tokens=81, seed=i, **SUDOKU_PARAMS)
        request = Request(str(i), tuple(tokenizer(sudoku_prompt(plan.grid)).input_ids), params)
        plans.append(plan)
        handles.append(engine.submit(constrain(plan, request)))
    engine.run_until_idle()
    return [bool(grid_of(p, h.wait(0), tokenizer.decode)["valid"]) for p, h in zip(plans, handles, strict=True)]


def paired(got: list[bool], reference: list[bool]) -> str:
    """Mean per-puzzle difference (points) and its standard error: the same puzzles and seeds in both."""
    diffs = [int(g) - int(r) for g, r in zip(got, reference, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    return f"{100 * mean:+.1f} ± {100 * (var / n) ** 0.5:.1f}"


def api_weight_bytes(directory: Path) -> int:
    """The weight bytes GET /v1/models reports for the checkpoint in `directory` (the registry's reading)."""
    from shared.registry import weight_facts

    return weight_facts(directory, json.loads((directory / "config.json").read_text()))["weight_bytes"]


def variants(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """(method, min_weights) of each quantized row; None: the default rule."""
    return [(m, w) for m in args.methods for w in args.min_weights]


def quality(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from worker.training.demo_model.tasks import TEXT_TASKS, held_out

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    reference = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    canvas = reference.config.canvas_length
    prompts = [p for task in [*TEXT_TASKS, "sudoku"] for p, _ in held_out(task, args.prompts, seed=args.seed)]
    engine = Engine(reference, max_rows=64)
    handles = [engine.submit(Request(str(i), tuple(tokenizer(p).input_ids), SamplingParams(max_new_tokens=canvas)))
               for i, p in enumerate(prompts)]  # fmt: skip
    engine.run_until_idle()
    answers = [h.wait(0).token_ids for h in handles]
    levels = {lv: held_out("sudoku", args.puzzles, seed=args.seed, level=lv) for lv in ("easy", "medium")}
    print(f"model {args.model}: {len(prompts)} prompts, {args.puzzles} puzzles per level, seed {args.seed}")
    print("| weights | KL first step | argmax first | KL last step | argmax last | easy solved | medium solved "
          "| easy Δ (paired) | medium Δ (paired) | weight bytes | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base: dict[str, list[bool]] = {}
    for method, min_weights in [("fp32", None), *variants(args)]:
        started = time.perf_counter()
        model, name, directory = reference, method, Path(args.model)
        if method != "fp32":
            rule = {} if min_weights is None else {"min_weights": min_weights}
            name = f"{method}, min_weights {rule.get('min_weights', MIN_WEIGHTS)}"
            directory = Path(args.work) / f"demo-{method}-{min_weights}"
            quantize_checkpoint(Path(args.model), directory, method, device="cpu", **rule)
            model = load_quantized(directory, torch.device("cpu"), torch.float32)
        first, last = [], []
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            ids = tokenizer(prompt).input_ids
            noise = torch.randint(0, reference.config.get_text_config().vocab_size, (canvas,),
                                  generator=torch.Generator().manual_seed(i))  # fmt: skip
            done = torch.tensor((answer + [tokenizer.pad_token_id] * canvas)[:canvas])
            first.append(logits_pair(reference, model, ids, noise))
            last.append(logits_pair(reference, model, ids, done))
        results = {level: solved(model, tokenizer, pairs) for level, pairs in levels.items()}
        base = base or results
        rate = {level: sum(r) / len(r) for level, r in results.items()}
        mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
        print(
            f"| {name} | {mean(first, 'kl'):.4f} | {mean(first, 'agree'):.1%} | {mean(last, 'kl'):.4f} | "
            f"{mean(last, 'agree'):.1%} | {rate['easy']:.1%} | {rate['medium']:.1%} | "
            f"{paired(results['easy'], base['easy'])} | {paired(results['medium'], base['medium'])} | "
            f"{api_weight_bytes(directory):,} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )


def paper(args: argparse.Namespace) -> None:
    """Checkpoint bytes of the architecture per method and size rule, from shapes alone (bf16 source)."""
    src = write_config(args.arch, Path(args.work) / "src")
    model = meta_model(src)
    stored = {id(t): (n, t) for n, t in (*model.named_parameters(), *model.named_buffers()) if n in model.state_dict()}
    print(f"arch {args.arch}: {sum(t.numel() for _, t in stored.values()):,} stored weights")
    print("| method | min_weights | quantized tensors | smallest quantized | checkpoint bytes | GiB |")
    print("|---|---|---|---|---|---|")
    for method, min_weights in variants(args):
        rule = MIN_WEIGHTS if min_weights is None else min_weights
        plan = targets(model, rule)
        shapes = {f"{p}.{w}": shape for t in plan for p in t.paths for w, shape in t.shapes.items()}
        total = 0
        for name, tensor in stored.values():
            specs = codec(method).specs(shapes[name]).values() if name in shapes else ()
            total += sum(torch.Size(s.shape).numel() * s.dtype.itemsize for s in specs) or tensor.numel() * 2
        smallest = min((torch.Size(shape).numel() for shape in shapes.values()), default=0)
        print(f"| {method} | {rule} | {len(plan)} | {smallest:,} | {total:,} | {total / 2**30:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small", choices=[*sorted(ARCHS), "tiny"])
    parser.add_argument("--methods", default="nf4,int8,fp8", help="comma-separated: nf4, int8, fp8")
    parser.add_argument("--rows", default="1,8", help="row counts to time")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per request")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument("--quality", action="store_true", help="the demo model's quality figures instead")
    parser.add_argument("--paper", action="store_true", help="the architecture's checkpoint bytes, from shapes")
    parser.add_argument("--min-weights", default="", help="comma-separated size rules (default: layout.py's)")
    parser.add_argument("--seed", type=int, default=10_000, help="held-out seed (another one: a tuning set)")
    parser.add_argument("--model", default="models/canvas-demo")
    parser.add_argument("--prompts", type=int, default=20, help="held-out prompts per task (quality)")
    parser.add_argument("--puzzles", type=int, default=100, help="held-out Sudoku puzzles per level (quality)")
    parser.add_argument("--work", help="scratch directory (default: a temporary one, removed)")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.rows = [int(r) for r in args.rows.split(",")]
    args.min_weights = [int(w) for w in args.min_weights.split(",") if w] or [None]
    scratch = None
    if args.work is None:
        scratch = args.work = tempfile.mkdtemp(prefix="canvas-quantized-")
    try:
        quality(args) if args.quality else paper(args) if args.paper else speed(args)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
