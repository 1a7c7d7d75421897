"""The task body in-process (no Celery): claim, generate, record; timeouts and unknown models."""

from __future__ import annotations

import pytest

from shared.db import session_scope
from shared.jobs import create_job, new_job_id
from shared.models import Job
from tests.conftest import TINY
from worker.host import ModelHost, load_model
from worker.tasks import run_generation_job


@pytest.fixture(scope="module")
def host(tiny_model_dir) -> ModelHost:
    host = ModelHost()
    host.add(load_model(TINY, tiny_model_dir, [1]))
    return host


def queued_job(settings, model: str = TINY, **params) -> str:
    job = Job(
        id=new_job_id(),
        tenant_id="t",
        kind="generate",
        model=model,
        input={"input_ids": [2, 9]},
        input_ids=[2, 9],
        params={
            "max_new_tokens": 8,
            "max_denoising_steps": 4,
            "entropy_bound": 0.1,
            "t_min": 0.4,
            "t_max": 0.8,
            "stability_threshold": 1,
            "confidence_threshold": 0.005,
            "seed": 1,
            **params,
        },
    )
    with session_scope(settings.database_url) as session:
        create_job(session, job)
    return job.id


def load(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def test_a_job_runs_once_and_a_second_delivery_is_skipped(settings, host) -> None:
    job_id = queued_job(settings)
    assert run_generation_job(settings, host, job_id) == "succeeded"
    assert run_generation_job(settings, host, job_id) == "skipped"
    job = load(settings, job_id)
    assert job.status == "succeeded"
    assert job.attempts == 1
    assert len(job.output["token_ids"]) <= 8


def test_a_job_past_the_time_limit_fails_with_timeout(settings, host) -> None:
    job_id = queued_job(settings, max_denoising_steps=50)
    assert run_generation_job(settings.with_(max_job_seconds=0), host, job_id) == "timed out"
    job = load(settings, job_id)
    assert job.status == "failed"
    assert job.error["type"] == "timeout"


def test_a_model_not_loaded_here_fails_clearly(settings, host) -> None:
    job_id = queued_job(settings, model="elsewhere")
    assert run_generation_job(settings, host, job_id) == "failed"
    job = load(settings, job_id)
    assert job.error["type"] == "model_not_loaded"
    assert "elsewhere" in job.error["message"]


def test_a_stop_string_cuts_the_text_and_ends_generation_early(settings, host) -> None:
    full_id = queued_job(settings, max_new_tokens=64)
    assert run_generation_job(settings, host, full_id) == "succeeded"
    full = load(settings, full_id).output
    text = full["text"]
    # A printable ASCII character's first appearance after the first canvas's start (one byte token).
    at = next(i for i in range(8, len(text)) if text[i].isascii() and text[i].isprintable() and text[i] not in text[:i])
    stop = text[at]

    job_id = queued_job(settings, max_new_tokens=64, stop=["never", stop])
    assert run_generation_job(settings, host, job_id) == "succeeded"
    out = load(settings, job_id).output
    assert out["text"] == text[:at] and out["finish_reason"] == "stop"
    assert out["token_ids"] == full["token_ids"][: len(out["token_ids"])]
    assert len(out["token_ids"]) < len(full["token_ids"])  # what follows the stop was cut (or never made)


def test_stop_strings_are_matched_on_the_text(host) -> None:
    from worker.tasks import engine_request

    loaded = host.get(TINY)
    request = engine_request("job_x", [2, 9], {"seed": 1, "stop": ["\n\n", "END"]}, loaded, 0.25)
    ids = loaded.tokenizer.encode("ab\n\nc END", add_special_tokens=False)
    assert request.stop_within(ids) == 4  # through the second "\n": "ab" and the stop's two tokens
    assert request.stop_within(ids[:3]) is None
    assert engine_request("job_y", [2, 9], {"seed": 1}, loaded, 0.25).stop_within is None


def test_a_sudoku_job_with_tries_past_the_time_limit_fails_with_timeout(settings, host) -> None:
    """Every try is canceled; no try's grid turns the timeout into a success."""
    tokenizer = host.get(TINY).tokenizer
    grid = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
    digits = [tokenizer(d, add_special_tokens=False).input_ids[0] for d in "123456789"]
    job_id = queued_job(settings, max_new_tokens=81, max_denoising_steps=50)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.kind, job.input = "sudoku", {"grid": grid, "digit_ids": digits, "tries": 3}
    assert run_generation_job(settings.with_(max_job_seconds=0), host, job_id) == "timed out"
    assert (load(settings, job_id).status, load(settings, job_id).error["type"]) == ("failed", "timeout")
