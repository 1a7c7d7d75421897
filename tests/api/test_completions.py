"""The OpenAI-compatible endpoints at the API (no worker): what becomes of the OpenAI fields, the 422s that
name what is wrong, the 504 that names the job when nothing runs it, and the stream's hold-back of stops."""

from __future__ import annotations

import json

import pytest

from api.completions import Shape, _chunks
from tests.conftest import TINY, auth


@pytest.fixture
def quick_app(settings):
    from api.app import create_app

    return create_app(settings.with_(sync_wait_seconds=0.5))


def post(client, key: str, path: str, **body):
    return client.post(f"/v1/{path}", json={"model": TINY, **body}, headers=auth(key))


def test_without_a_worker_the_wait_ends_in_504_naming_the_job_which_is_kept(quick_app, keys) -> None:
    client = quick_app.test_client()
    response = post(client, keys["a"], "completions", prompt="hi", max_tokens=8, temperature=0.5, seed=3, stop="\n")
    assert response.status_code == 504
    message = response.get_json()["error"]["message"]
    job_id = message.split()[1]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(keys["a"])).get_json()
    assert (job["kind"], job["status"], job["input"]) == ("generate", "queued", {"prompt": "hi"})
    params = job["params"]
    assert (params["max_new_tokens"], params["seed"], params["stop"]) == (8, 3, ["\n"])
    assert (params["t_min"], params["t_max"]) == pytest.approx((0.2, 0.4))  # temperature scales 0.4 -> 0.8


def test_a_chat_request_records_its_messages_and_the_canvas_extension(quick_app, keys) -> None:
    client = quick_app.test_client()
    messages = [{"role": "user", "content": "hello"}]
    response = post(client, keys["a"], "chat/completions", messages=messages, canvas={"entropy_bound": 0.3})
    job_id = response.get_json()["error"]["message"].split()[1]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(keys["a"])).get_json()
    assert job["input"] == {"messages": messages}
    assert job["params"]["entropy_bound"] == 0.3


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        ("completions", {"prompt": "hi", "top_p": 0.9}, "top_p", "unknown field"),
        ("completions", {"prompt": "hi", "n": 2}, "n", "less than or equal to 1"),
        ("completions", {"prompt": ["a", "b"]}, "prompt", "one prompt per request"),
        ("completions", {}, "prompt", "Field required"),
        ("completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ("completions", {"prompt": "hi", "canvas": {"t_min": 2.0}}, "canvas.t_max", "must be greater than t_min"),
        ("completions", {"prompt": "hi", "seed": 1, "canvas": {"seed": 2}}, "canvas.seed", "give it once"),
        ("completions", {"prompt": "hi", "canvas": {"bogus": 1}}, "canvas.bogus", "Extra inputs"),
        ("chat/completions", {"messages": []}, "messages", "at least 1 item"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
                              "max_completion_tokens": 4}, "max_tokens", "not both"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs", "unknown"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_field(client, keys, path, body, param, says) -> None:
    response = post(client, keys["a"], path, **body)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["param"] == param and says in error["message"]


def test_an_unknown_model_is_404_and_a_missing_key_401(client, keys) -> None:
    assert (
        client.post("/v1/completions", json={"model": "nope", "prompt": "hi"}, headers=auth(keys["a"])).status_code
        == 404
    )
    assert client.post("/v1/completions", json={"model": TINY, "prompt": "hi"}).status_code == 401


def test_the_stream_holds_back_what_a_stop_may_cut() -> None:
    """The worker commits whole canvases and cuts its output before a stop string, but a stop can begin in
    a canvas already relayed ("...ST" then "OP..."): those characters must not have been sent."""
    shape = Shape(chat=False, job_id="job_1", model="m", created=0)
    finished = {"status": "succeeded", "output": {"text": "hello world ", "finish_reason": "stop"}, "stats": {}}
    events = [("canvas", "1", {"text": "hello world ST"}), ("canvas", "2", {"text": ""}), ("done", None, finished)]
    chunks = list(_chunks(iter(events), shape, holdback=len("STOP"), with_usage=False))
    assert chunks[-1] == "data: [DONE]\n\n"
    texts = [json.loads(c.removeprefix("data: "))["choices"][0]["text"] for c in chunks[:-1]]
    assert "".join(texts) == "hello world " and not any("S" in t for t in texts)
    assert json.loads(chunks[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "stop"
    unheld = list(_chunks(iter(events), shape, holdback=0, with_usage=False))  # what the hold-back prevents
    assert "ST" in "".join(json.loads(c.removeprefix("data: "))["choices"][0]["text"] for c in unheld[:-1])
