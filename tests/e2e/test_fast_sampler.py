"""The fast sampling mode end to end: a Sudoku job and an OpenAI completion that ask for it run through the
real API, Redis and a worker, record it with the job, and keep what their constraints promise."""

from __future__ import annotations

from openai import OpenAI

from tests.conftest import TINY
from tests.e2e.live import Client
from tests.e2e.test_job_kinds import PUZZLE, given_conflicts, valid_sudoku


def test_a_sudoku_job_in_fast_mode_keeps_its_givens_and_rules(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(kind="sudoku", model=TINY, grid=PUZZLE, params={"seed": 3, "sampler": "fast"})
    done = client.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["params"]["sampler"] == "fast"
    grid = done["output"]["grid"]
    assert len(grid) == 81 and grid.isdigit()
    assert all(p == "." or p == g for p, g in zip(PUZZLE, grid, strict=True))
    assert given_conflicts(grid, PUZZLE) == 0  # the rule mask (on by default) bans the givens' digits
    assert done["output"]["valid"] == valid_sudoku(grid, PUZZLE)
    assert done["stats"]["denoising_steps"] >= 1


def test_a_completion_can_ask_for_the_fast_sampler(live_api, keys) -> None:
    sdk = OpenAI(base_url=f"{live_api.url}/v1", api_key=keys["a"], max_retries=0, timeout=120)
    answer = sdk.completions.create(
        model=TINY, prompt="hello", max_tokens=20, seed=4, extra_body={"canvas": {"sampler": "fast"}}
    )
    job = Client(live_api.url, keys["a"]).get(answer.id.removeprefix("cmpl-"))
    assert job["status"] == "succeeded" and job["params"]["sampler"] == "fast"
    assert answer.choices[0].text == job["output"]["text"]
    assert 0 < len(job["output"]["token_ids"]) <= 20
