"""The OpenAI-compatible endpoints at the API (no worker): what becomes of the OpenAI fields, the 400s in
OpenAI's shape that name what is wrong and what to use instead, neutral knobs accepted, the 504 that names
the job when nothing runs it, and the stream's hold-back of stops and its per-choice indexes."""

from __future__ import annotations

import json

import pytest

from api.completions import _chunks
from api.response_schemas import ErrorBody
from shared.openai_responses import Shape, final_text
from tests.conftest import TINY, auth


@pytest.fixture
def quick_app(settings):
    from api.app import create_app

    return create_app(settings.with_(sync_wait_seconds=0.5))


def post(client, key: str, path: str, headers: dict | None = None, **body):
    return client.post(f"/v1/{path}", json={"model": TINY, **body}, headers={**auth(key), **(headers or {})})


def recorded_job(client, key: str, response) -> dict:
    """The job a 504 (no worker runs it) names, as GET /v1/jobs/{id} shows it."""
    assert response.status_code == 504, response.get_json()
    job_id = response.get_json()["error"]["job_id"]
    return client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()


def test_without_a_worker_the_wait_ends_in_504_naming_the_job_which_is_kept(quick_app, keys) -> None:
    client = quick_app.test_client()
    response = post(client, keys["a"], "completions", prompt="hi", max_tokens=8, temperature=0.5, seed=3, stop="\n")
    assert response.status_code == 504
    assert response.headers["x-should-retry"] == "false"  # the SDK would otherwise submit a second job
    error = response.get_json()["error"]
    assert error["code"] == "timeout" and error["job_id"] in error["message"]
    assert response.headers["x-canvas-job-id"] == error["job_id"]
    job = recorded_job(client, keys["a"], response)
    assert (job["kind"], job["status"], job["input"]) == ("generate", "queued", {"prompt": "hi"})
    params = job["params"]
    assert (params["max_new_tokens"], params["seed"], params["stop"]) == (8, 3, ["\n"])
    assert (params["t_min"], params["t_max"]) == pytest.approx((0.2, 0.4))  # temperature scales 0.4 -> 0.8


def test_the_default_wait_is_below_common_proxy_idle_timeouts() -> None:
    from shared.settings import Settings

    assert Settings().sync_wait_seconds < 60  # nginx's and AWS ALB's default idle timeout


def test_an_idempotency_key_makes_one_job_however_often_the_request_is_sent(quick_app, keys) -> None:
    client = quick_app.test_client()
    key = {"Idempotency-Key": "chat-7"}
    messages = [{"role": "user", "content": "hello"}]
    first = post(client, keys["a"], "chat/completions", headers=key, messages=messages)
    again = post(client, keys["a"], "chat/completions", headers=key, messages=messages)
    assert first.get_json()["error"]["job_id"] == again.get_json()["error"]["job_id"]
    listed = client.get("/v1/jobs", headers=auth(keys["a"])).get_json()["data"]
    assert len(listed) == 1
    other = post(client, keys["a"], "chat/completions", headers=key, messages=[{"role": "user", "content": "bye"}])
    assert other.status_code == 400 and other.get_json()["error"]["param"] == "Idempotency-Key"


def test_chat_messages_as_clients_write_them_are_rendered(quick_app, keys) -> None:
    """Text parts joined, `developer` as `system`, a `name` kept, null assistant content as empty text, and
    the neutral knobs and ignored fields clients send by default accepted."""
    client = quick_app.test_client()
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "name": "ada", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "three"},
    ]
    neutral = {"top_p": 1, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}, "n": 1, "logprobs": False}
    ignored = {"user": "u-1", "metadata": {"team": "x"}, "store": False, "service_tier": "auto"}
    extra = {"parallel_tool_calls": True, "tools": [], "response_format": {"type": "text"}, "stream": False}
    response = post(client, keys["a"], "chat/completions", messages=messages, **neutral, **ignored, **extra)
    job = recorded_job(client, keys["a"], response)
    assert job["input"] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one\ntwo", "name": "ada"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "three"},
        ]
    }


def test_a_token_id_prompt_and_a_list_of_one_prompt_are_taken(quick_app, keys) -> None:
    client = quick_app.test_client()
    job = recorded_job(client, keys["a"], post(client, keys["a"], "completions", prompt=[5, 6, 7]))
    assert job["input"] == {"input_ids": [5, 6, 7]}
    job = recorded_job(client, keys["a"], post(client, keys["a"], "completions", prompt=[[8, 9]]))
    assert job["input"] == {"input_ids": [8, 9]}
    job = recorded_job(client, keys["a"], post(client, keys["a"], "completions", prompt=["say"], seed=None))
    assert job["input"] == {"prompt": "say"}


def test_echo_records_the_prompt_text_its_answer_begins_with(quick_app, keys, tiny_model_dir) -> None:
    """A text prompt is echoed as given; token ids as the text they decode to (the BOS left out, as the
    worker decodes a completion); without echo nothing is recorded."""
    from api.tokenization import ModelTokenizer

    client = quick_app.test_client()
    job = recorded_job(client, keys["a"], post(client, keys["a"], "completions", prompt="a, b", echo=True))
    assert job["input"] == {"prompt": "a, b", "echo": "a, b"}
    ids = ModelTokenizer(tiny_model_dir).encode("hello, world")
    job = recorded_job(client, keys["a"], post(client, keys["a"], "completions", prompt=ids, echo=True))
    assert job["input"] == {"input_ids": ids, "echo": "hello, world"}
    job = recorded_job(client, keys["a"], post(client, keys["a"], "completions", prompt="hi", echo=False))
    assert job["input"] == {"prompt": "hi"}


def jobs_of(client, key: str) -> list[dict]:
    return client.get("/v1/jobs", headers=auth(key)).get_json()["data"]


def test_several_prompts_make_one_job_each_and_a_replay_finds_them_all(quick_app, keys) -> None:
    """prompt: [...] (as LangChain's OpenAI batches it): one job per prompt, in order, each with n seeds;
    the 504 names them all; the same Idempotency-Key again makes no new job and names the same ones."""
    client = quick_app.test_client()
    key = {"Idempotency-Key": "many-1"}
    response = post(client, keys["a"], "completions", headers=key, prompt=["a", "b", "c"], n=2, max_tokens=4)
    assert response.status_code == 504 and response.headers["x-should-retry"] == "false"
    error = ErrorBody.model_validate(response.get_json()).error.model_dump()  # the documented shape
    ids = error["job_ids"]
    assert len(set(ids)) == 3 and error["job_id"] == ids[0] and all(i in error["message"] for i in ids)
    assert response.headers["x-canvas-job-id"] == ",".join(ids)
    jobs = [client.get(f"/v1/jobs/{i}", headers=auth(keys["a"])).get_json() for i in ids]
    assert [j["input"] for j in jobs] == [{"prompt": p, "n": 2} for p in "abc"]
    again = post(client, keys["a"], "completions", headers=key, prompt=["a", "b", "c"], n=2, max_tokens=4)
    assert again.get_json()["error"]["job_ids"] == ids and len(jobs_of(client, keys["a"])) == 3
    ids_only = post(client, keys["a"], "completions", prompt=[[5, 6], [7]], max_tokens=4).get_json()["error"]
    assert [client.get(f"/v1/jobs/{i}", headers=auth(keys["a"])).get_json()["input"] for i in ids_only["job_ids"]] == [
        {"input_ids": [5, 6]},
        {"input_ids": [7]},
    ]


def test_a_rate_limit_part_way_names_the_accepted_jobs_and_a_keyed_retry_reuses_them(settings, keys) -> None:
    """The documented rule: prompts are accepted in order; a 429 at prompt 2 leaves jobs 0 and 1, names
    them and says not to retry blindly; the same Idempotency-Key later reuses them and adds prompt 2's."""
    from api.app import create_app

    client = create_app(settings.with_(sync_wait_seconds=0.5, max_active_jobs=2)).test_client()
    key = {"Idempotency-Key": "limited"}
    response = post(client, keys["a"], "completions", headers=key, prompt=["a", "b", "c"], max_tokens=4)
    assert response.status_code == 429 and response.headers["x-should-retry"] == "false"
    accepted = response.headers["x-canvas-job-id"].split(",")
    assert len(accepted) == 2 and {j["id"] for j in jobs_of(client, keys["a"])} == set(accepted)
    client.post(f"/v1/jobs/{accepted[1]}/cancel", headers=auth(keys["a"]))  # one slot frees up
    again = post(client, keys["a"], "completions", headers=key, prompt=["a", "b", "c"], max_tokens=4)
    named = again.headers["x-canvas-job-id"].split(",")
    assert named[:2] == accepted and len(named) == 3 and len(jobs_of(client, keys["a"])) == 3


def test_one_bad_prompt_among_several_makes_no_job(quick_app, keys) -> None:
    client = quick_app.test_client()
    response = post(client, keys["a"], "completions", prompt=[[5, 6], [10**9]], max_tokens=4)
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["param"] == "prompt.1" and "vocabulary" in error["message"]
    assert jobs_of(client, keys["a"]) == []


def test_n_and_logprobs_are_recorded_on_the_job(quick_app, keys) -> None:
    client = quick_app.test_client()
    job = recorded_job(client, keys["a"], post(client, keys["a"], "completions", prompt="x", n=3, logprobs=2))
    assert job["input"] == {"prompt": "x", "n": 3, "logprobs": 2}
    chat = post(client, keys["a"], "chat/completions", messages=[{"role": "user", "content": "x"}], logprobs=True)
    assert recorded_job(client, keys["a"], chat)["input"]["logprobs"] == 0


def test_a_suffix_makes_an_infill_job_with_a_hole_of_max_tokens(quick_app, keys) -> None:
    client = quick_app.test_client()
    response = post(client, keys["a"], "completions", prompt="def f(", suffix="):\n", max_tokens=5)
    job = recorded_job(client, keys["a"], response)
    assert job["kind"] == "infill" and job["params"]["max_new_tokens"] == 5 + len("):\n")  # byte-level tokens
    assert job["input"]["prefix"] == "def f(" and job["input"]["segments"][0] == {"hole": 5}


@pytest.mark.parametrize(
    ("path", "body", "param", "code", "says"),
    [
        ("completions", {"prompt": "hi", "top_p": 0.9}, "top_p", "unsupported_value", "use temperature"),
        ("completions", {"prompt": "hi", "frequency_penalty": 0.5}, "frequency_penalty", "unsupported_value", "0"),
        ("completions", {"prompt": "hi", "best_of": 3}, "best_of", "unsupported_value", "use n"),
        ("completions", {"prompt": "hi", "echo": True, "logprobs": 1}, "echo", "unsupported_value",
         "echo with logprobs would need the prompt tokens' log-probabilities"),
        ("completions", {"prompt": "hi", "echo": True, "logprobs": 0}, "echo", "unsupported_value", "drop one"),
        ("completions", {"prompt": "hi", "echo": True, "suffix": "x"}, "echo", "unsupported_value", "suffix"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo",
         "unknown_parameter", "unknown field"),
        ("completions", {"prompt": "hi", "bogus": 1}, "bogus", "unknown_parameter", "unknown field"),
        ("completions", {"prompt": "hi", "n": 17}, "n", "invalid_value", "less than or equal to 16"),
        ("completions", {"prompt": ["a"] * 21}, "prompt", "invalid_value", "at most 20"),
        ("completions", {"prompt": ["a", ""]}, "prompt.1", "invalid_value", "must not be empty"),
        ("completions", {"prompt": []}, "prompt", "invalid_value", "must not be empty"),
        ("completions", {}, "prompt", "missing_required_parameter", "Field required"),
        ("completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens", "invalid_value", "greater than or equal to 1"),
        ("completions", {"prompt": "hi", "canvas": {"t_min": 2.0}}, "canvas.t_max", "invalid_value", "t_min"),
        ("completions", {"prompt": "hi", "seed": 1, "canvas": {"seed": 2}}, "canvas.seed", "invalid_value", "once"),
        ("completions", {"prompt": "hi", "suffix": "x", "stop": "y"}, "stop", "unsupported_value", "max_tokens"),
        ("completions", {"prompt": [1, 2], "suffix": "x"}, "suffix", "invalid_value", "text prompt"),
        ("chat/completions", {"messages": []}, "messages", "invalid_value", "at least 1 item"),
        ("completions", {"prompt": "hi", "canvas": {"sampler": "quick"}}, "canvas.sampler", "invalid_value",
         "'exact' or 'fast'"),
        ("completions", {"prompt": "hi", "logprobs": 1, "canvas": {"sampler": "fast"}}, "logprobs", "invalid_value",
         "exact sampler"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
                              "max_completion_tokens": 4}, "max_tokens", "invalid_value", "not both"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs",
         "invalid_value", "logprobs: true"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format":
                              {"type": "json_object"}}, "response_format", "unsupported_value", "JSON"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function",
                              "function": {"name": "f"}}]}, "tools", "unsupported_value", "tool"),
        ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url":
                              {"url": "http://x"}}]}]}, "messages.0.content.0", "unsupported_value", "text parts"),
        ("chat/completions", {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
         "messages.0.role", "unsupported_value", "tool"),
        ("chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages.0.content",
         "invalid_value", "needs content"),
    ],
)  # fmt: skip
def test_bad_requests_are_400s_in_openais_shape_naming_the_field(client, keys, path, body, param, code, says) -> None:
    response = post(client, keys["a"], path, **body)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert says in error["message"]


def test_other_errors_keep_their_status_in_openais_shape(client, keys) -> None:
    unknown = client.post("/v1/completions", json={"model": "nope", "prompt": "hi"}, headers=auth(keys["a"]))
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "model_not_found"
    missing_key = client.post("/v1/completions", json={"model": TINY, "prompt": "hi"})
    assert missing_key.status_code == 401 and missing_key.get_json()["error"]["code"] == "invalid_api_key"
    not_json = client.post("/v1/completions", data="{", headers=auth(keys["a"]))
    assert not_json.status_code == 400 and not_json.get_json()["error"]["code"] == "invalid_json"
    huge = {"model": TINY, "prompt": "x" * (client.application.config["MAX_CONTENT_LENGTH"] + 1)}
    too_large = client.post("/v1/completions", json=huge, headers=auth(keys["a"]))
    assert too_large.status_code == 413 and too_large.get_json()["error"]["code"] == "request_too_large"


def test_the_native_jobs_route_keeps_its_422(client, keys) -> None:
    response = client.post("/v1/jobs", json={"model": TINY, "prompt": "hi", "top_p": 1}, headers=auth(keys["a"]))
    assert response.status_code == 422 and "code" not in response.get_json()["error"]


def test_models_carry_openais_fields_and_ours(client, keys) -> None:
    listed = client.get("/v1/models", headers=auth(keys["a"])).get_json()["data"]
    tiny = next(m for m in listed if m["id"] == TINY)
    assert tiny["object"] == "model" and tiny["owned_by"] == "public"
    assert isinstance(tiny["created"], int) and tiny["created_at"].startswith("20")
    assert tiny["canvas_length"] == 32


def streamed(events: list, choices: int = 1, prompt: str = "") -> tuple[list[str], list[dict]]:
    shape = Shape(chat=False, job_id="job_1", model="m", created=0, choices=choices)
    chunks = list(_chunks([iter(events)], shape, with_usage=False, prompts=[prompt]))
    assert chunks[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(c.removeprefix("data: ")) for c in chunks[:-1]]
    texts = [""] * choices
    for p in payloads:
        for c in p.get("choices", []):
            texts[c["index"]] += c["text"]
    return texts, payloads


def done(text: str, finish: str = "eos", **output) -> tuple:
    job = {"id": "job_1", "status": "succeeded", "output": {"text": text, "finish_reason": finish, **output}}
    return ("done", None, job)


def test_the_stream_relays_the_workers_text_and_its_stop() -> None:
    """The worker assembles the text (it holds back what could begin a stop string, tests/worker/
    test_text_assembly.py): the API relays its deltas unchanged, then what the final text adds."""
    events = [("canvas", "1", {"text": "hello "}), ("canvas", "2", {"text": "world"}), done("hello world!", "stop")]
    texts, payloads = streamed(events)
    assert [p["choices"][0]["text"] for p in payloads] == ["hello ", "world", "!"]
    assert texts == ["hello world!"] and payloads[-1]["choices"][0]["finish_reason"] == "stop"
    assert final_text({"text": "abc", "finish_reason": "stop"}) == ("abc", "stop")
    assert final_text({"text": "abc", "finish_reason": "length"}) == ("abc", "length")


def test_each_choice_streams_under_its_index_its_logprobs_with_its_last_chunk() -> None:
    top = [{"token_id": 1, "token": "a", "logprob": -0.1}, {"token_id": 9, "token": "z", "logprob": -2.5}]
    logprobs = [
        {"token_id": 1, "token": "a", "logprob": -0.1, "top": top},
        {"token_id": 2, "token": "b", "logprob": -0.2, "top": []},
    ]
    choices = [
        {"text": "ab", "token_ids": [1, 2], "finish_reason": "eos", "seed": 1, "logprobs": logprobs},
        {"text": "xyz", "token_ids": [3, 4, 5], "finish_reason": "length", "seed": 2},
    ]
    events = [
        ("canvas", "1", {"text": "a", "index": 0}),
        ("canvas", "2", {"text": "xy", "index": 1}),
        done("ab", choices=choices),
    ]
    texts, payloads = streamed(events, choices=2)
    assert texts == ["ab", "xyz"]
    finals = {c["index"]: c for p in payloads for c in p["choices"] if c["finish_reason"]}
    assert {i: c["finish_reason"] for i, c in finals.items()} == {0: "stop", 1: "length"}
    assert finals[0]["logprobs"] == {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"a": -0.1, "z": -2.5}, {"b": -0.2}],  # the returned token is always listed
        "text_offset": [0, 1],
    }
    assert finals[1]["logprobs"] is None


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
    assert streamed(events)[0] == ["hello world"]
    other = [*events[:3], ("canvas", "4", {"text": "howdy"}), done("howdy")]  # a retry that wrote otherwise
    changed, payloads = streamed(other)
    assert changed == ["hello "] and payloads[-1]["error"]["type"] == "output_changed"


def test_several_jobs_stream_one_after_the_other_under_global_indexes() -> None:
    """Two prompts, n=2: job p's choice i comes under index p * 2 + i; usage is both jobs' sum; a job that
    failed ends the stream with its error and no usage."""
    shape = Shape(chat=False, job_id="job_1", model="m", created=0, choices=2)

    def job(texts: list[str], prompt_tokens: int) -> list[tuple]:
        choices = [{"text": t, "token_ids": [1] * len(t), "finish_reason": "eos"} for t in texts]
        canvases = [("canvas", str(i), {"text": t[:1], "index": i}) for i, t in enumerate(texts)]
        view = {
            "id": "j",
            "status": "succeeded",
            "output": {"choices": choices},
            "stats": {"prompt_tokens": prompt_tokens},
        }
        return [*canvases, ("done", None, view)]

    streams = [iter(job(["ab", "cd"], 3)), iter(job(["efg", "h"], 4))]
    chunks = list(_chunks(streams, shape, with_usage=True))
    payloads = [json.loads(c.removeprefix("data: ")) for c in chunks[:-1]]
    texts = ["", "", "", ""]
    for p in payloads:
        for c in p["choices"]:
            texts[c["index"]] += c["text"]
    assert texts == ["ab", "cd", "efg", "h"] and chunks[-1] == "data: [DONE]\n\n"
    assert payloads[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}
    failed = [("done", None, {"id": "j2", "status": "failed", "error": {"message": "boom"}})]
    chunks = list(_chunks([iter(job(["ab", "cd"], 3)), iter(failed)], shape, with_usage=True))
    assert "boom" in chunks[-2] and not any("usage" in c for c in chunks)


def test_an_echoed_prompt_is_each_choices_first_chunk() -> None:
    """With echo the prompt comes first, alone, under each choice's index; then the completion as without."""
    choices = [
        {"text": "ab", "token_ids": [1, 2], "finish_reason": "eos", "seed": 1},
        {"text": "xyz", "token_ids": [3, 4, 5], "finish_reason": "length", "seed": 2},
    ]
    events = [("canvas", "1", {"text": "a", "index": 0}), done("ab", choices=choices)]
    texts, payloads = streamed(events, choices=2, prompt="Q: ")
    assert texts == ["Q: ab", "Q: xyz"]
    assert [(p["choices"][0]["index"], p["choices"][0]["text"]) for p in payloads[:2]] == [(0, "Q: "), (1, "Q: ")]
    assert payloads[2]["choices"][0]["text"] == "a"
