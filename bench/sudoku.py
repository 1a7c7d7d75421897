"""Sudoku solve rate of a model through the engine: entropy-ordered denoising against forced left-to-right
order (one position accepted per step, leftmost first: what an autoregressive decoder does), on the same
model with the same step budget, on held-out puzzles per difficulty.

    .venv/bin/python bench/sudoku.py --model models/canvas-demo --puzzles 1000

Both orders run with Sudoku jobs' sampling defaults (`shared.job_kinds.sudoku.SUDOKU_PARAMS`, chosen on a tuning
set: `--seed 20000`), or with `--sampler released` the released model's.

Prints, per difficulty and order: solved (valid grids that keep every given), blank cells equal to the
unique solution (chance: about 11%), mean denoising steps of the answer, decoder forwards per puzzle (all
tries together) and blank cells filled per decoder forward.

`--samplers exact,fast` runs each order with both sampling modes on the same puzzles and seeds, and adds
standard errors: of the solve rate (binomial), of the mean steps, of the cells per forward (a ratio of
sums: the delta method), and of the paired differences fast - exact per puzzle.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository (run as a script)

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from shared.job_kinds.sudoku import SUDOKU_PARAMS, SudokuPlan
from shared.sudoku import is_solution, render
from worker.engine import Engine, Request, SamplingParams
from worker.job_kinds.sudoku import constrain, grid_of, pick_try, repeats, try_seeds
from worker.training.demo_model.tasks import SUDOKU_LEVELS, held_out, sudoku_prompt


def run(
    model,
    tokenizer,
    puzzles: list[list[int]],
    solutions: list[list[int]],
    order: str,
    sampler: dict,
    max_rows: int,
    tries: int = 1,
    rules: bool = False,
    mode: str = "exact",
) -> dict:
    """Solve every puzzle; with `tries` > 1, as Sudoku jobs do: that many seeds per puzzle, denoised as rows
    of the same batches, the answer picked by `pick_try` (every try runs to the end here: no early cancel)."""
    digits = [tokenizer(d, add_special_tokens=False).input_ids[0] for d in "123456789"]
    engine = Engine(model, max_rows=max_rows)
    handles = []
    plans = [SudokuPlan(grid=render(cells), digit_ids=digits, rules=rules) for cells in puzzles]
    for i, plan in enumerate(plans):
        for j, seed in enumerate(try_seeds(i, tries)):
            params = SamplingParams(max_new_tokens=81, seed=seed, order=order, sampler=mode, **sampler)
            request = Request(f"s{i}.{j}", tuple(tokenizer(sudoku_prompt(plan.grid)).input_ids), params)
            handles.append(engine.submit(constrain(plan, request)))
    started = time.perf_counter()
    engine.run_until_idle()
    elapsed = time.perf_counter() - started
    results = [h.wait(0) for h in handles]
    solved = steps = forwards = filled = right = 0
    per_puzzle: dict[str, list[float]] = {"solved": [], "steps": [], "forwards": [], "filled": []}
    for i, (cells, solution) in enumerate(zip(puzzles, solutions, strict=True)):
        mine = results[i * tries : (i + 1) * tries]
        outputs = [grid_of(plans[i], result, tokenizer.decode) for result in mine]
        chosen = pick_try(outputs)
        grid = [int(c) for c in outputs[chosen]["grid"]] if repeats(outputs[chosen]["grid"]) < 81 else []
        solved += bool(grid) and is_solution(grid, cells)
        steps += mine[chosen].denoising_steps
        forwards += sum(result.denoising_steps for result in mine)
        blanks = [k for k, v in enumerate(cells) if not v]
        filled += len(blanks)
        right += sum(1 for k in blanks if grid and grid[k] == solution[k])
        per_puzzle["solved"].append(float(bool(grid) and is_solution(grid, cells)))
        per_puzzle["steps"].append(mine[chosen].denoising_steps)
        per_puzzle["forwards"].append(sum(result.denoising_steps for result in mine))
        per_puzzle["filled"].append(len(blanks))
    n = len(puzzles)
    return {
        "solved": solved / n,
        "cells_right": right / filled,
        "mean_steps": steps / n,
        "cells_per_forward": filled / forwards,
        "forwards": forwards / n,
        "seconds": elapsed,
        "per_puzzle": per_puzzle,
    }


def standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def ratio_error(numerators: list[float], denominators: list[float]) -> float:
    """The standard error of sum(numerators) / sum(denominators) over puzzles (the delta method)."""
    ratio = sum(numerators) / sum(denominators)
    residuals = [a - ratio * b for a, b in zip(numerators, denominators, strict=True)]
    return standard_error(residuals) / statistics.fmean(denominators)


def with_errors(r: dict) -> str:
    """Solve rate, mean steps and cells per forward, each with its standard error."""
    p = r["per_puzzle"]
    return (
        f"solved {r['solved']:.1%} ± {standard_error(p['solved']):.1%}, steps {r['mean_steps']:.2f} ± "
        f"{standard_error(p['steps']):.2f}, cells/fwd {r['cells_per_forward']:.3f} ± "
        f"{ratio_error(p['filled'], p['forwards']):.3f}"
    )


def paired(fast: dict, exact: dict) -> str:
    """fast - exact on the same puzzles: solve rate and forwards per puzzle, with the paired differences'
    standard errors, and z = difference / standard error."""
    out = []
    for name, fmt in (("solved", ".1%"), ("forwards", ".2f")):
        diffs = [a - b for a, b in zip(fast["per_puzzle"][name], exact["per_puzzle"][name], strict=True)]
        mean, se = statistics.fmean(diffs), standard_error(diffs)
        z = mean / se if se > 0 else 0.0
        out.append(f"{name} {mean:+{fmt}} ± {se:{fmt}} (z {z:+.2f})")
    return "fast - exact, paired: " + ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/canvas-demo")
    parser.add_argument("--puzzles", type=int, default=1000, help="held-out puzzles per difficulty")
    parser.add_argument("--budget", type=int, default=64, help="denoising steps allowed (both orders)")
    parser.add_argument(
        "--sampler", choices=("sudoku", "released"), default="sudoku", help="Sudoku jobs' defaults or the model's"
    )
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--levels", default=",".join(SUDOKU_LEVELS))
    parser.add_argument("--orders", default="entropy,left_to_right", help="which orders to run")
    parser.add_argument("--samplers", default="exact", help="sampling modes to run: exact, fast or both")
    parser.add_argument("--seed", type=int, default=10_000, help="held-out seed (another one: a tuning set)")
    parser.add_argument("--tries", type=int, default=1, help="seeds per puzzle, picked as Sudoku jobs' `tries`")
    parser.add_argument(
        "--rules", action="store_true", help="Sudoku jobs' `rules` (their default): mask digits a peer holds"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tuned = {k: v for k, v in SUDOKU_PARAMS.items() if k != "max_denoising_steps"}
    sampler = {"max_denoising_steps": args.budget, **(tuned if args.sampler == "sudoku" else {})}
    print(f"model {args.model}, {args.puzzles} held-out puzzles per level (seed {args.seed}), sampler {sampler}")
    print(f"tries per puzzle: {args.tries} (steps: of the picked try; fwd/puzzle: of all tries together)")
    print(f"rules mask: {'on' if args.rules else 'off (the model alone)'}")
    print(
        f"{'level':8} {'givens':7} {'order':14} {'solved':>7} {'blanks right':>12} "
        f"{'steps':>6} {'fwd/puzzle':>10} {'cells/fwd':>9} {'s':>6}"
    )
    for level in args.levels.split(","):
        low, high = SUDOKU_LEVELS[level]
        pairs = held_out("sudoku", args.puzzles, seed=args.seed, level=level)
        puzzles = [[0 if c == "." else int(c) for c in p.removeprefix("sudoku: ").strip()] for p, _ in pairs]
        solutions = [[int(c) for c in s] for _, s in pairs]
        for order in args.orders.split(","):
            arms = {}
            for mode in args.samplers.split(","):
                r = run(
                    model, tokenizer, puzzles, solutions, order, sampler, args.max_rows, args.tries, args.rules, mode
                )
                arms[mode] = r
                label = order if mode == "exact" else f"{order}/{mode}"
                print(
                    f"{level:8} {low}-{high:<4} {label:14} {r['solved']:7.1%} {r['cells_right']:12.1%} "
                    f"{r['mean_steps']:6.1f} {r['forwards']:10.1f} {r['cells_per_forward']:9.2f} {r['seconds']:6.0f}",
                    flush=True,
                )
                if "," in args.samplers:
                    print(f"    {mode}: {with_errors(r)}", flush=True)
            if "exact" in arms and "fast" in arms:
                print(f"    {paired(arms['fast'], arms['exact'])}", flush=True)


if __name__ == "__main__":
    main()
