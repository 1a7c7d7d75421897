"""The task body in-process (no Celery): claim, generate, record; timeouts and unknown models."""

from __future__ import annotations

from dataclasses import fields

import pytest

from shared.contracts import GenerationParams
from shared.db import session_scope
from shared.jobs import create_job, new_job_id
from shared.models import Job
from tests.conftest import TINY
from worker.engine import SamplingParams
from worker.host import ModelHost, load_model
from worker.job_kinds.generation import sampling_params
from worker.tasks import run_generation_job
from worker.text_assembly import TextAssembler


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
        params=GenerationParams.model_validate(
            {"max_new_tokens": 8, "max_denoising_steps": 4, "seed": 1, **params}
        ).model_dump(),
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
    loaded = host.get(TINY)
    stop_within = TextAssembler(loaded.decode, ["\n\n", "END"]).stop_within()
    ids = loaded.tokenizer.encode("ab\n\nc END", add_special_tokens=False)
    assert stop_within(ids) == 4  # through the second "\n": "ab" and the stop's two tokens
    assert stop_within(ids[:3]) is None
    assert TextAssembler(loaded.decode).stop_within() is None


def test_the_engine_runs_with_the_jobs_declared_parameters() -> None:
    """GenerationParams is the one declaration: every engine parameter is one of its fields, with the
    same default, so nothing a client sets is dropped on the way to the engine."""
    engine_defaults = {f.name: f.default for f in fields(SamplingParams)}
    job_defaults = GenerationParams().model_dump()
    assert {k: job_defaults[k] for k in engine_defaults if k != "seed"} == {
        k: v for k, v in engine_defaults.items() if k != "seed"
    }
    chosen = GenerationParams(max_new_tokens=7, t_min=0.1, t_max=0.3, order="left_to_right", seed=5)
    assert sampling_params(chosen) == SamplingParams(
        max_new_tokens=7, t_min=0.1, t_max=0.3, order="left_to_right", seed=5
    )


def test_an_unknown_kind_fails_the_job_with_a_catalog_code(settings, host) -> None:
    job_id = queued_job(settings)
    with session_scope(settings.database_url) as session:
        session.get(Job, job_id).kind = "translate"
    assert run_generation_job(settings, host, job_id) == "failed"
    error = load(settings, job_id).error
    assert error == {"type": "internal_error", "message": "unknown job kind 'translate'"}


def test_an_engine_refusal_is_a_documented_code_not_a_class_name(settings, host) -> None:
    job_id = queued_job(settings)
    with session_scope(settings.database_url) as session:
        session.get(Job, job_id).input_ids = [2, 10**6]  # outside the tiny vocabulary: the engine refuses it
    assert run_generation_job(settings, host, job_id) == "failed"
    error = load(settings, job_id).error
    assert error["type"] == "invalid_parameters" and "outside the vocabulary" in error["message"]


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
