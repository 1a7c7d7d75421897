"""Sudoku jobs' `tries`: which try answers the job (`pick_try`), and a job run in-process on the shipped
model whose first seed fails, against each seed solved alone and checked by the test's own validator."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.contracts import GenerationParams
from shared.db import session_scope
from shared.job_kinds.sudoku import SUDOKU_PARAMS
from shared.jobs import create_job, new_job_id
from shared.models import Job
from shared.sudoku import render, solve
from worker.host import ModelHost, load_model
from worker.job_kinds.sudoku import pick_try, repeats, try_seeds
from worker.tasks import run_generation_job
from worker.training.demo_model.tasks import held_out, sudoku_prompt

PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SOLUTION = render(solve([0 if c == "." else int(c) for c in PUZZLE])[0])
ONE_REPEAT = "99" + SOLUTION[2:]  # two changes: repeats in row 1, column 1 and box 1 (and in column 2)


def done(grid: str, valid: bool) -> dict:
    return {"grid": grid, "valid": valid}


def test_the_first_valid_try_wins_once_every_earlier_try_is_done() -> None:
    bad, good = done(ONE_REPEAT, False), done(SOLUTION, True)
    assert pick_try([bad, good, None]) == 1  # later tries still running: no need to wait for them
    assert pick_try([None, good, good]) is None  # try 0 may still be valid: undecided
    assert pick_try([good, None]) == 0
    assert pick_try([bad, None, good]) is None


def test_with_no_valid_try_the_fewest_repeats_win_the_earliest_on_a_tie() -> None:
    worse = done("1" * 81, False)
    bad = done(ONE_REPEAT, False)
    assert repeats(worse["grid"]) > repeats(bad["grid"]) > 0
    assert pick_try([worse, bad, done(ONE_REPEAT, False)]) == 1
    assert pick_try([done("", False), worse]) == 1  # an empty (canceled) grid counts as worst
    assert pick_try([None, worse]) is None


def test_tries_take_the_next_seeds() -> None:
    assert try_seeds(7, 3) == [7, 8, 9]
    assert try_seeds(2**63 - 1, 2) == [2**63 - 1, 0]
    assert pick_try([]) is None


MODEL = Path(__file__).resolve().parents[2] / "models" / "canvas-demo"
# A held-out medium puzzle the shipped model fails with seed 0 and solves with a later seed (found once by
# running seeds 0-3 on the first held-out puzzles; the test below re-derives every seed's outcome alone).
HARD_FOR_SEED_0 = "medium", 0


@pytest.mark.skipif(not (MODEL / "config.json").exists(), reason="no shipped demo model")
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # the tries, not the database, are tested
def test_a_job_with_tries_answers_with_the_first_seed_that_solves_it(settings) -> None:
    from tests.worker.test_shipped_model import Shipped, solve_all, valid_solution

    level, index = HARD_FOR_SEED_0
    prompt, _ = held_out("sudoku", index + 1, level=level)[index]
    cells = [0 if c == "." else int(c) for c in prompt.removeprefix("sudoku: ").strip()]
    host = ModelHost()
    host.add(load_model("canvas-demo", MODEL, [1]))
    loaded = host.get("canvas-demo")
    digits = [loaded.tokenizer(d, add_special_tokens=False).input_ids[0] for d in "123456789"]
    try:
        # each seed alone, on the host's model through an engine of the test's own
        solved = solve_all(Shipped(loaded.model, loaded.tokenizer, digits), [cells] * 4, "entropy", seeds=range(4))
        alone = [valid_solution(grid, cells) for grid in solved.grids]
        assert not alone[0] and any(alone), "the puzzle no longer separates the seeds: pick another"
        job = Job(
            id=new_job_id(),
            tenant_id="t",
            kind="sudoku",
            model="canvas-demo",
            input={"grid": render(cells), "digit_ids": digits, "tries": 4},
            input_ids=loaded.tokenizer(sudoku_prompt(render(cells))).input_ids,
            params={**GenerationParams(max_new_tokens=81, seed=0).model_dump(), **SUDOKU_PARAMS},
        )
        with session_scope(settings.database_url) as session:
            create_job(session, job)
        assert run_generation_job(settings, host, job.id) == "succeeded"
    finally:
        loaded.engine.stop()
    with session_scope(settings.database_url) as session:
        output = session.get(Job, job.id).output
    assert (output["tries"], output["try"], output["seed"]) == (4, alone.index(True), alone.index(True))
    assert output["valid"] and valid_solution([int(c) for c in output["grid"]], cells)
