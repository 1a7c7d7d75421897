"""The demo model's data and recipe: seeded tasks with right answers, held-out splits that training never
sees, and a (very short) training run that writes a model the worker can load."""

from __future__ import annotations

import io
import json
import random

from shared.sudoku import is_solution, parse, solve
from worker.demo_model.tasks import SUDOKU_LEVELS, Mix, held_out, sudoku, training_pairs


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


def test_text_tasks_are_right_and_held_out_pairs_are_new() -> None:
    training = set(training_pairs(Mix(sudoku=0, text_each=200), seed=0))
    for task in ("reverse", "sort", "add"):
        pairs = held_out(task, 20, mix_text=200)
        assert not training & set(pairs)
        for prompt, answer in pairs:
            body = prompt.split(": ", 1)[1].strip()
            if task == "reverse":
                assert answer == body[::-1]
            elif task == "sort":
                assert answer.split() == [str(n) for n in sorted(int(x) for x in body.split())]
            else:
                a, b = body.split("+")
                assert answer == str(int(a) + int(b))
    fills = held_out("fill", 10)
    assert all(prompt not in {p for p, _ in training} for prompt, _ in fills)


def test_a_short_training_run_writes_a_loadable_model_with_its_card(tmp_path) -> None:
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from worker.demo_model.train import Recipe, train_demo

    recipe = Recipe(hidden=32, layers=2, canvas_length=96, steps=3, batch_size=4, sudoku=4, text_each=4)
    log = io.StringIO()
    figures = train_demo(tmp_path / "demo", recipe, log=log)
    assert "step 3/3" in log.getvalue()
    card = json.loads((tmp_path / "demo" / "canvas_card.json").read_text())
    assert card["recipe"]["steps"] == 3 and card["figures"] == figures
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "demo")
    assert model.config.canvas_length == 96
    assert AutoTokenizer.from_pretrained(tmp_path / "demo")("7").input_ids[-1] > 2
