"""The demo model's data and recipe: seeded tasks with right answers, held-out splits that training never
sees, and a (very short) training run that writes a model the worker can load."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch

from shared.sudoku import is_solution, parse, solve
from worker.tiny import build_tokenizer
from worker.training.demo_model.stream import DemoStream, sudoku_pool
from worker.training.demo_model.tasks import HELD_OUT_TEXT, SUDOKU_LEVELS, held_out, sudoku


def test_sudoku_pairs_are_unique_puzzles_with_their_solution_at_each_level() -> None:
    rng = random.Random(3)
    for level, (low, high) in SUDOKU_LEVELS.items():
        for _ in range(5):
            prompt, completion = sudoku(rng, level)
            puzzle = parse(prompt.removeprefix("sudoku: ").strip())
            assert low <= sum(1 for v in puzzle if v) <= high
            solution = [int(c) for c in completion]
            assert is_solution(solution, puzzle)
            assert solve(puzzle, limit=2) == [solution]


def valid_solution(grid: list[int], givens: list[int]) -> bool:
    """An independent check: every row, column and box holds 1-9 once, and every given is kept."""
    units = [[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)]
    units += [[(b // 3 * 3 + r) * 9 + b % 3 * 3 + c for r in range(3) for c in range(3)] for b in range(9)]
    return all(sorted(grid[i] for i in u) == list(range(1, 10)) for u in units) and all(
        g in (0, v) for g, v in zip(givens, grid, strict=True)
    )


def test_held_out_text_pairs_are_right() -> None:
    for task in ("reverse", "sort", "add"):
        pairs = held_out(task, 20)
        assert len(set(pairs)) == 20
        for prompt, answer in pairs:
            body = prompt.split(": ", 1)[1].strip()
            if task == "reverse":
                assert answer == body[::-1]
            elif task == "sort":
                assert answer.split() == [str(n) for n in sorted(int(x) for x in body.split())]
            else:
                a, b = body.split("+")
                assert answer == str(int(a) + int(b))
    assert held_out("add", 5) == held_out("add", 20)[:5]  # a prefix: smaller evaluations stay held out


@pytest.fixture(scope="module")
def stream() -> DemoStream:
    return DemoStream(build_tokenizer(), sudoku_pool(250, seed=0), canvas=96, batch_size=64, seed=0)


def decoded_rows(stream: DemoStream, step: int) -> list[tuple[str, str]]:
    tokenizer = build_tokenizer()
    batch = stream(step)
    rows = []
    for row in batch.full.tolist():
        prompt = tokenizer.decode(row[1 : batch.start])
        answer = tokenizer.decode([t for t in row[batch.start :] if t != tokenizer.eos_token_id])
        rows.append((prompt, answer))
    return rows


def test_stream_sudoku_rows_are_valid_puzzles_with_their_unique_solution(stream: DemoStream) -> None:
    steps = [s for s in range(40) if decoded_rows(stream, s)[0][0].startswith("sudoku: ")][:3]
    assert steps, "no Sudoku step in 40"
    originals = {tuple(p) for p in stream.pool[0].tolist()}
    for step in steps:
        for prompt, answer in decoded_rows(stream, step)[:20]:
            puzzle = parse(prompt.removeprefix("sudoku: ").strip())
            solution = [int(c) for c in answer]
            assert valid_solution(solution, puzzle)
            assert solve(puzzle, limit=2) == [solution]  # the symmetry kept the solution unique
            assert 25 <= sum(1 for v in puzzle if v) <= 50
            assert tuple(puzzle) not in originals  # drawn through a symmetry, not the pool's own grid


def test_stream_is_a_function_of_the_step_and_never_emits_held_out_pairs(stream: DemoStream) -> None:
    again = DemoStream(build_tokenizer(), stream.pool, canvas=96, batch_size=64, seed=0)
    assert torch.equal(stream(7).full, again(7).full) and torch.equal(stream(3).full, again(3).full)
    held = {pair for task in ("reverse", "sort", "add") for pair in held_out(task, HELD_OUT_TEXT)}
    tasks_seen = set()
    for step in range(60):
        rows = decoded_rows(stream, step)
        tasks_seen.add(rows[0][0].split(":")[0])
        assert len({len(p) for p, _ in rows}) == 1  # one prompt length per batch
        for prompt, answer in rows:
            assert (prompt, answer) not in held
            if prompt.startswith("add: "):
                a, b = prompt[5:].strip().split("+")
                assert answer == str(int(a) + int(b))
    assert {"sudoku", "reverse", "sort", "add", "fill", "say"} <= tasks_seen


def test_a_short_training_run_writes_a_loadable_model_with_its_card(tmp_path) -> None:
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from worker.training.demo_model.train import Recipe, train_demo

    recipe = Recipe(hidden=32, layers=2, canvas_length=96, steps=3, batch_size=4, sudoku=10)
    log = io.StringIO()
    figures = train_demo(tmp_path / "demo", recipe, log=log)
    assert "step 3/3" in log.getvalue()
    card = json.loads((tmp_path / "demo" / "canvas_card.json").read_text())
    assert card["recipe"]["steps"] == 3 and card["figures"] == figures
    assert "--steps 3 " in (tmp_path / "demo" / "README.md").read_text()  # the exact command
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "demo")
    assert model.config.canvas_length == 96
    assert AutoTokenizer.from_pretrained(tmp_path / "demo")("7").input_ids[-1] > 2

    # continuing from it starts from its weights (init_from), and a time budget ends the run early
    more = Recipe(steps=10_000, batch_size=4, sudoku=10, minutes=0.001, init_from=str(tmp_path / "demo"))
    figures = train_demo(tmp_path / "more", more, log=log)
    assert figures["steps"] == 21  # measured at step 20, then the budget (long spent) allows one more
    assert figures["parameters"] == sum(p.numel() for p in model.parameters())
    assert json.loads((tmp_path / "more" / "canvas_card.json").read_text())["recipe"]["init_from"].endswith("demo")


def test_the_cards_command_continues_a_model_from_the_cli(tmp_path) -> None:
    from worker.cli import main

    base = ["train", "demo", "--hidden", "32", "--layers", "2", "--batch-size", "2", "--sudoku", "10"]
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "2", "--warmup-steps", "1"]) == 0
    more = ["--steps", "1", "--init-from", str(tmp_path / "a"), "--encoder-loss-weight", "0.25", "--no-bf16"]
    assert main([*base, "--out", str(tmp_path / "b"), *more]) == 0
    card = (tmp_path / "b" / "README.md").read_text()
    assert f"--init-from {tmp_path / 'a'}" in card and "--warmup-steps" in card  # the exact command
    assert "--encoder-loss-weight 0.25" in card and "--no-bf16" in card
    assert json.loads((tmp_path / "b" / "canvas_card.json").read_text())["figures"]["steps"] == 1
