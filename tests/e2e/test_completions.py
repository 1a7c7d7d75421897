"""The OpenAI-compatible endpoints end to end, driven by the official `openai` SDK (a real client we do
not control) against the real API, Redis and a worker: the answers are the jobs' outputs."""

from __future__ import annotations

import time

import pytest
from openai import OpenAI, OpenAIError

from tests.conftest import TINY
from tests.e2e.live import Client

FAST = {"canvas": {"max_denoising_steps": 6}}


def sdk(live_api, key: str) -> OpenAI:
    return OpenAI(base_url=f"{live_api.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_a_completion_answers_with_its_jobs_output(live_api, keys) -> None:
    answer = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt="hello", max_tokens=20, seed=4, extra_body=FAST
    )
    job = Client(live_api.url, keys["a"]).get(answer.id.removeprefix("cmpl-"))
    assert job["status"] == "succeeded" and job["params"]["seed"] == 4
    assert answer.object == "text_completion" and answer.model == TINY
    assert abs(answer.created - time.time()) < 300  # Unix seconds of the job's creation, in UTC
    assert answer.choices[0].text == job["output"]["text"]
    assert answer.choices[0].finish_reason == {"eos": "stop", "length": "length"}[job["output"]["finish_reason"]]
    assert answer.usage.completion_tokens == len(job["output"]["token_ids"]) <= 20
    assert answer.usage.prompt_tokens == job["stats"]["prompt_tokens"] > 0


def test_a_streamed_chat_completion_adds_up_to_its_jobs_output(live_api, keys) -> None:
    stream = sdk(live_api, keys["a"]).chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=70,  # more than one canvas of the tiny model: several content chunks
        stream=True,
        stream_options={"include_usage": True},
        extra_body=FAST,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    job = Client(live_api.url, keys["a"]).get(chunks[0].id.removeprefix("chatcmpl-"))
    assert job["status"] == "succeeded" and job["input"]["messages"][0]["content"] == "hi"
    assert text == job["output"]["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == len(job["output"]["token_ids"])


def test_bad_input_reaches_the_sdk_as_a_4xx_naming_the_field(live_api, keys) -> None:
    with pytest.raises(OpenAIError) as caught:
        sdk(live_api, keys["a"]).completions.create(model=TINY, prompt="hi", top_p=0.5)
    assert caught.value.status_code == 422 and "top_p" in str(caught.value)
