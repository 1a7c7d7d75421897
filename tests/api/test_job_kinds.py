"""Infill and sudoku jobs at the API: what is accepted and recorded, and the 422s that name the problem."""

from __future__ import annotations

import pytest

from tests.conftest import TINY, auth

PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def submit(client, key: str, **body):
    return client.post("/v1/jobs", json={"model": TINY, **body}, headers=auth(key))


def error(response) -> tuple[int, str, str]:
    body = response.get_json()["error"]
    return response.status_code, body.get("param") or "", body["message"]


def test_a_sudoku_job_records_the_grid_and_generates_81_cells(client, keys) -> None:
    response = submit(client, keys["a"], kind="sudoku", grid=PUZZLE.replace(".", "0"))
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["kind"] == "sudoku"
    assert job["input"]["grid"] == PUZZLE  # blanks normalised to '.'
    assert job["params"]["max_new_tokens"] == 81
    # the Sudoku sampling defaults, recorded with the job (SUDOKU_PARAMS)
    params = job["params"]
    assert (params["max_denoising_steps"], params["entropy_bound"], params["t_min"], params["t_max"]) == (
        64,
        0.02,
        0.8,
        1.2,
    )


def test_a_sudoku_jobs_own_parameters_win_over_the_sudoku_defaults(client, keys) -> None:
    response = submit(client, keys["a"], kind="sudoku", grid=PUZZLE, params={"t_min": 0.5, "entropy_bound": 0.3})
    params = response.get_json()["params"]
    assert (params["t_min"], params["t_max"]) == (0.5, 0.8)  # a temperature given: neither Sudoku default
    assert (params["entropy_bound"], params["max_denoising_steps"]) == (0.3, 64)
    status, _, message = error(submit(client, keys["a"], kind="sudoku", grid=PUZZLE, params={"t_min": 1.5}))
    assert status == 422 and "t_max (0.8) must be greater than t_min (1.5)" in message
    assert submit(client, keys["a"], kind="generate", prompt="hi").get_json()["params"]["t_max"] == 0.8


@pytest.mark.parametrize(
    ("grid", "says"),
    [
        (PUZZLE[:-1], "81 cells; this one has 80"),
        (PUZZLE[:-1] + "x", "cell 81 (row 9, column 9) is 'x'"),
        ("55" + PUZZLE[2:], "digit 5 twice in row 1"),
        ("5" + PUZZLE[1:9] + "5" + PUZZLE[10:], "digit 5 twice in column 1"),
    ],
)
def test_bad_grids_are_refused_naming_the_problem(client, keys, grid: str, says: str) -> None:
    status, field, message = error(submit(client, keys["a"], kind="sudoku", grid=grid))
    assert (status, field) == (422, "grid")
    assert says in message


def test_an_infill_template_records_its_segments(client, keys) -> None:
    response = submit(client, keys["a"], kind="infill", template="def add(a, b):\n    <|hole:6|>\n# end<|hole|>")
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["input"]["prefix"] == "def add(a, b):\n    "
    segments = job["input"]["segments"]
    assert [("hole" in s, s.get("hole") or s["text"]) for s in segments] == [
        (True, 6),
        (False, "\n# end"),
        (True, 16),  # the default length of a hole
    ]
    assert job["params"]["max_new_tokens"] == 6 + len("\n# end") + 16  # byte-level tokens


def test_prefix_suffix_infill_is_accepted(client, keys) -> None:
    response = submit(client, keys["a"], kind="infill", prefix="the ", suffix=" says moo.", hole_tokens=3)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["params"]["max_new_tokens"] == 3 + len(" says moo.")


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"template": "no holes here"}, "template", "has no hole"),
        ({"template": "a <|hole:0|> b"}, "template", "1 to 4096 tokens"),
        ({"template": "<|hole|>", "prefix": "x"}, "template", "not both"),
        ({"prefix": "the "}, "hole_tokens", "'hole_tokens'"),
        ({}, "prefix", "needs 'template'"),
        ({"prefix": "a", "suffix": "b" * 40, "hole_tokens": 4}, "suffix", "canvas of 32"),
        ({"template": "x<|hole:30|>abc"}, "template", "take 33 tokens"),
        ({"template": "<|hole|>", "grid": PUZZLE}, "grid", "does not apply to infill jobs"),
    ],
)
def test_bad_infill_requests_are_refused(client, keys, body: dict, field: str, says: str) -> None:
    status, got_field, message = error(submit(client, keys["a"], kind="infill", **body))
    assert (status, got_field) == (422, field), message
    assert says in message


def test_a_generate_job_refuses_fields_of_other_kinds(client, keys) -> None:
    status, field, message = error(submit(client, keys["a"], prompt="hi", grid=PUZZLE))
    assert (status, field) == (422, "grid")
    assert "does not apply to generate jobs" in message


def test_order_is_a_validated_parameter(client, keys) -> None:
    ok = submit(client, keys["a"], kind="sudoku", grid=PUZZLE, params={"order": "left_to_right"})
    assert ok.status_code == 202
    status, _field, message = error(submit(client, keys["a"], prompt="hi", params={"order": "random"}))
    assert status == 422 and "order" in message


def test_the_sampler_is_a_validated_parameter_recorded_with_the_job(client, keys) -> None:
    ok = submit(client, keys["a"], kind="sudoku", grid=PUZZLE, params={"sampler": "fast"})
    assert ok.status_code == 202 and ok.get_json()["params"]["sampler"] == "fast"
    assert submit(client, keys["a"], prompt="hi").get_json()["params"]["sampler"] == "exact"
    status, field, message = error(submit(client, keys["a"], prompt="hi", params={"sampler": "quick"}))
    assert status == 422 and field == "params.sampler" and "'exact' or 'fast'" in message


def test_a_sudoku_job_records_its_tries(client, keys) -> None:
    assert submit(client, keys["a"], kind="sudoku", grid=PUZZLE).get_json()["input"]["tries"] == 1
    assert submit(client, keys["a"], kind="sudoku", grid=PUZZLE, tries=4).get_json()["input"]["tries"] == 4


def test_a_sudoku_job_records_whether_the_rules_mask_applies(client, keys) -> None:
    assert submit(client, keys["a"], kind="sudoku", grid=PUZZLE).get_json()["input"]["rules"] is True
    assert submit(client, keys["a"], kind="sudoku", grid=PUZZLE, rules=False).get_json()["input"]["rules"] is False


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"kind": "sudoku", "grid": PUZZLE, "rules": "yes"}, "boolean"),
        ({"prompt": "hi", "rules": True}, "does not apply to generate jobs"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(client, keys, body: dict, says: str) -> None:
    status, field, message = error(submit(client, keys["a"], **body))
    assert status == 422 and "rules" in field + message
    assert says in message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"kind": "sudoku", "grid": PUZZLE, "tries": 0}, "greater than or equal to 1"),
        ({"kind": "sudoku", "grid": PUZZLE, "tries": 17}, "less than or equal to 16"),
        ({"kind": "sudoku", "grid": PUZZLE, "tries": "4"}, "integer"),
        ({"prompt": "hi", "tries": 2}, "does not apply to generate jobs"),
    ],
)
def test_bad_tries_are_refused_naming_the_field(client, keys, body: dict, says: str) -> None:
    status, field, message = error(submit(client, keys["a"], **body))
    assert status == 422 and "tries" in field + message
    assert says in message
