"""Request bodies exactly as LangChain's `ChatOpenAI` and `OpenAI` build them (tests/e2e/langchain_bodies/,
written out from LangChain's defaults), sent to the real API with a worker: the neutral knobs they carry
are accepted and the answers parse as the SDK's own types; a knob that cannot be honoured is a 400."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.conftest import TINY

BODIES = Path(__file__).parent / "langchain_bodies"


def body(name: str) -> dict:
    return {**json.loads((BODIES / name).read_text()), "model": TINY}


def post(live_api, key: str, path: str, payload: dict) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return requests.post(f"{live_api.url}/v1/{path}", json=payload, headers=headers, timeout=120, stream=True)


def events(response: requests.Response) -> list[dict]:
    lines = [line for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


@pytest.mark.parametrize("name", ["chat_openai_invoke.json", "chat_openai_history.json"])
def test_chat_openai_bodies_are_answered(live_api, keys, name) -> None:
    response = post(live_api, keys["a"], "chat/completions", body(name))
    assert response.status_code == 200, response.text
    answer = ChatCompletion.model_validate(response.json())
    assert answer.choices[0].message.role == "assistant" and answer.usage.completion_tokens >= 0
    assert response.headers["x-canvas-job-id"] == answer.id.removeprefix("chatcmpl-")


def test_a_streaming_chat_openai_body_is_answered_in_chunks(live_api, keys) -> None:
    response = post(live_api, keys["a"], "chat/completions", body("chat_openai_stream.json"))
    assert response.status_code == 200, response.text
    chunks = [ChatCompletionChunk.model_validate(e) for e in events(response)]
    assert chunks[-1].usage is not None and chunks[-1].choices == []  # stream_options.include_usage
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_chat_openai_with_top_p_is_told_what_to_use_instead(live_api, keys) -> None:
    response = post(live_api, keys["a"], "chat/completions", body("chat_openai_top_p.json"))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "top_p" and "temperature" in error["message"]


def test_openai_llm_bodies_are_answered(live_api, keys) -> None:
    response = post(live_api, keys["a"], "completions", body("openai_llm_invoke.json"))
    assert response.status_code == 200, response.text
    answer = Completion.model_validate(response.json())
    assert answer.choices[0].logprobs is None and answer.usage.completion_tokens <= 256
    streamed = post(live_api, keys["a"], "completions", body("openai_llm_stream.json"))
    assert streamed.status_code == 200, streamed.text
    chunks = events(streamed)  # the SDK's Completion type has no null finish_reason: only the last parses
    assert all(c["object"] == "text_completion" and c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert Completion.model_validate(chunks[-1]).choices[0].finish_reason in ("stop", "length")


def test_an_openai_llm_generate_body_with_several_prompts_is_answered(live_api, keys) -> None:
    """LangChain's OpenAI.generate([...]) sends the prompts in one request: one choice per prompt, in order."""
    payload = {**body("openai_llm_batch.json"), "max_tokens": 8, "canvas": {"max_denoising_steps": 6}}
    response = post(live_api, keys["a"], "completions", payload)
    assert response.status_code == 200, response.text
    answer = Completion.model_validate(response.json())
    assert [c.index for c in answer.choices] == [0, 1, 2]
    job_ids = response.headers["x-canvas-job-id"].split(",")
    assert len(set(job_ids)) == 3 and answer.id == "cmpl-" + job_ids[0]
