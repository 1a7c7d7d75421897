"""The OpenAI-compatible endpoints at the API (no worker): what becomes of the OpenAI fields, the 422s that
name what is wrong, the 504 that names the job when nothing runs it, and the stream's hold-back of stops."""

from __future__ import annotations

import json

import pytest

from api.completions import Shape, _chunks, final_text
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
    assert response.headers["x-should-retry"] == "false"  # the SDK would otherwise submit a second job
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
        ("completions", {"prompt": "hi", "canvas": {"sampler": "quick"}}, "canvas.sampler", "'exact' or 'fast'"),
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


def streamed(events: list) -> tuple[str, list[dict]]:
    shape = Shape(chat=False, job_id="job_1", model="m", created=0)
    chunks = list(_chunks(iter(events), shape, with_usage=False))
    assert chunks[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(c.removeprefix("data: ")) for c in chunks[:-1]]
    return "".join(p["choices"][0]["text"] for p in payloads if "choices" in p), payloads


def done(text: str, finish: str = "eos") -> tuple:
    return ("done", None, {"id": "job_1", "status": "succeeded", "output": {"text": text, "finish_reason": finish}})


def test_the_stream_relays_the_workers_text_and_its_stop() -> None:
    """The worker assembles the text (it holds back what could begin a stop string, tests/worker/
    test_text_assembly.py): the API relays its deltas unchanged, then what the final text adds."""
    events = [("canvas", "1", {"text": "hello "}), ("canvas", "2", {"text": "world"}), done("hello world!", "stop")]
    text, payloads = streamed(events)
    assert [p["choices"][0]["text"] for p in payloads] == ["hello ", "world", "!"]
    assert text == "hello world!" and payloads[-1]["choices"][0]["finish_reason"] == "stop"
    assert final_text({"text": "abc", "finish_reason": "stop"}) == ("abc", "stop")
    assert final_text({"text": "abc", "finish_reason": "length"}) == ("abc", "length")


def test_a_retried_job_is_not_streamed_twice() -> None:
    """A lost worker's job runs again from its first canvas (same seed): only new text is relayed."""
    events = [
        ("status", "1", {"status": "running", "attempt": 1}),
        ("canvas", "2", {"text": "hello "}),
        ("status", "3", {"status": "running", "attempt": 2}),
        ("canvas", "4", {"text": "hello "}),
        ("canvas", "5", {"text": "world"}),
        done("hello world"),
    ]
    assert streamed(events)[0] == "hello world"
    other = [*events[:3], ("canvas", "4", {"text": "howdy"}), done("howdy")]  # a retry that wrote otherwise
    changed, payloads = streamed(other)
    assert changed == "hello " and payloads[-1]["error"]["type"] == "output_changed"
