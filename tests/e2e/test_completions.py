"""The OpenAI-compatible endpoints end to end, driven by the official `openai` SDK (a real client we do
not control) against the real API, Redis and a worker: the answers are the jobs' outputs."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY
from tests.e2e.live import ApiServer, Client

FAST = {"canvas": {"max_denoising_steps": 6}}
HI = [{"role": "user", "content": "hi"}]


def sdk(live_api, key: str, retries: int = 0) -> OpenAI:
    return OpenAI(base_url=f"{live_api.url}/v1", api_key=key, max_retries=retries, timeout=120)


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
        messages=HI,
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


def test_n_choices_are_seeds_denoised_side_by_side(live_api, keys) -> None:
    answer = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt="hello", max_tokens=40, n=3, seed=11, extra_body=FAST
    )
    job = Client(live_api.url, keys["a"]).get(answer.id.removeprefix("cmpl-"))
    recorded = job["output"]["choices"]
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.text for c in answer.choices] == [c["text"] for c in recorded]
    assert [c["seed"] for c in recorded] == [11, 12, 13]
    assert len({tuple(c["token_ids"]) for c in recorded}) > 1  # different seeds, different texts
    assert answer.usage.completion_tokens == sum(len(c["token_ids"]) for c in recorded) == job["stats"]["output_tokens"]
    alone = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt="hello", max_tokens=40, seed=12, extra_body=FAST
    )
    assert alone.choices[0].text == answer.choices[1].text  # choice i is the request with seed + i


def test_n_choices_stream_each_under_its_index(live_api, keys) -> None:
    stream = sdk(live_api, keys["a"]).chat.completions.create(
        model=TINY, messages=HI, max_tokens=70, n=2, seed=5, stream=True, extra_body=FAST
    )
    texts, finished = ["", ""], set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    job = Client(live_api.url, keys["a"]).get(chunk.id.removeprefix("chatcmpl-"))
    assert texts == [c["text"] for c in job["output"]["choices"]] and finished == {0, 1}


def test_several_prompts_answer_n_choices_each_in_order(live_api, keys) -> None:
    """prompt=[...] with n=2: a job per prompt; choice index prompt_index * 2 + choice_index holds that
    job's choice; usage is the jobs' summed; the same Idempotency-Key replays the same jobs; streamed, each
    job's choices come under their global index."""
    client = sdk(live_api, keys["a"])
    headers = {"Idempotency-Key": "many-sdk"}
    prompts = ["hello", "the sky"]
    answer = client.completions.create(
        model=TINY, prompt=prompts, n=2, max_tokens=12, seed=7, extra_body=FAST, extra_headers=headers
    )
    native = Client(live_api.url, keys["a"])
    jobs = native.http.get(f"{live_api.url}/v1/jobs").json()["data"]
    by_prompt = {j["input"]["prompt"]: native.get(j["id"]) for j in jobs}
    assert sorted(by_prompt) == sorted(prompts)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    expected = [c["text"] for p in prompts for c in by_prompt[p]["output"]["choices"]]
    assert [c.text for c in answer.choices] == expected
    assert answer.usage.prompt_tokens == sum(j["stats"]["prompt_tokens"] for j in by_prompt.values())
    assert answer.usage.completion_tokens == sum(j["stats"]["output_tokens"] for j in by_prompt.values())
    assert answer.id == "cmpl-" + by_prompt["hello"]["id"]
    again = client.completions.create(
        model=TINY, prompt=prompts, n=2, max_tokens=12, seed=7, extra_body=FAST, extra_headers=headers
    )
    assert again.id == answer.id and [c.text for c in again.choices] == expected
    assert len(native.http.get(f"{live_api.url}/v1/jobs").json()["data"]) == 2
    stream = client.completions.create(
        model=TINY, prompt=prompts, n=2, max_tokens=40, seed=7, stream=True, extra_body=FAST
    )
    streamed, finished = ["", "", "", ""], set()
    for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    earlier = {j["id"] for j in by_prompt.values()}
    later = [native.get(j["id"]) for j in native.http.get(f"{live_api.url}/v1/jobs").json()["data"]]
    later_by_prompt = {j["input"]["prompt"]: j for j in later if j["id"] not in earlier}
    assert streamed == [c["text"] for p in prompts for c in later_by_prompt[p]["output"]["choices"]]
    assert finished == {0, 1, 2, 3}


def test_logprobs_are_those_of_the_final_denoising_step(live_api, keys) -> None:
    """A canvas commits the argmax of its last step, so each returned token is that step's most likely
    one: its log-probability equals the first alternative's, and the alternatives come in order."""
    answer = sdk(live_api, keys["a"]).chat.completions.create(
        model=TINY, messages=HI, max_tokens=40, logprobs=True, top_logprobs=3, seed=2, extra_body=FAST
    )
    job = Client(live_api.url, keys["a"]).get(answer.id.removeprefix("chatcmpl-"))
    content = answer.choices[0].logprobs.content
    assert len(content) == len(job["output"]["token_ids"]) > 0
    for entry in content:
        top = [t.logprob for t in entry.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True) and all(p <= 0 for p in top)
        assert entry.logprob == pytest.approx(top[0]) and entry.token == entry.top_logprobs[0].token
    legacy = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt="hello", max_tokens=20, logprobs=2, seed=2, extra_body=FAST
    )
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == legacy.usage.completion_tokens
    assert all(len(alternatives) <= 3 for alternatives in lp.top_logprobs)  # two, and the returned token


def test_echo_begins_each_choice_with_the_prompt_which_stop_strings_never_cut(live_api, keys) -> None:
    """echo with n=2 and a stop string the prompt holds: every choice is the prompt, whole, then its
    completion (cut at the stop as without echo); usage counts the prompt as prompt tokens only."""
    prompt = "a, b, c"
    answer = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt=prompt, echo=True, n=2, stop=",", max_tokens=12, seed=3, extra_body=FAST
    )
    job = Client(live_api.url, keys["a"]).get(answer.id.removeprefix("cmpl-"))
    recorded = job["output"]["choices"]
    assert [c.text for c in answer.choices] == [prompt + c["text"] for c in recorded]
    assert all("," not in c["text"] for c in recorded)  # the completions are cut, the echoed prompt is not
    assert [c.finish_reason for c in answer.choices] == [{"eos": "stop", "stop": "stop", "length": "length"}[
        c["finish_reason"]] for c in recorded]  # fmt: skip
    assert answer.usage.prompt_tokens == job["stats"]["prompt_tokens"]
    assert answer.usage.completion_tokens == sum(len(c["token_ids"]) for c in recorded)


def test_echo_of_a_token_id_prompt_is_its_decoded_text(live_api, keys, tiny_model_dir) -> None:
    from api.tokenization import ModelTokenizer

    ids = ModelTokenizer(tiny_model_dir).encode("hello, world")  # starts with the BOS, which is not text
    answer = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt=ids, echo=True, max_tokens=8, seed=3, extra_body=FAST
    )
    job = Client(live_api.url, keys["a"]).get(answer.id.removeprefix("cmpl-"))
    assert answer.choices[0].text == "hello, world" + job["output"]["text"]
    assert answer.usage.prompt_tokens == len(ids)


def test_a_streamed_echo_sends_the_prompt_as_each_choices_first_chunk(live_api, keys) -> None:
    stream = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt="hello", echo=True, n=2, max_tokens=40, seed=5, stream=True,
        stream_options={"include_usage": True}, extra_body=FAST,
    )  # fmt: skip
    chunks = list(stream)
    texts, firsts = ["", ""], {}
    for chunk in chunks:
        for choice in chunk.choices:
            firsts.setdefault(choice.index, choice.text)
            texts[choice.index] += choice.text
    job = Client(live_api.url, keys["a"]).get(chunks[0].id.removeprefix("cmpl-"))
    assert firsts == {0: "hello", 1: "hello"}
    assert texts == ["hello" + c["text"] for c in job["output"]["choices"]]
    assert chunks[-1].usage.completion_tokens == job["stats"]["output_tokens"]
    assert chunks[-1].usage.prompt_tokens == job["stats"]["prompt_tokens"]


def test_echo_of_several_prompts_begins_each_choice_with_its_own_prompt(live_api, keys) -> None:
    """Two prompts (a job each), n=2: choices 0-1 echo the first, 2-3 the second, streamed or not."""
    prompts = ["first", "second one"]
    client = sdk(live_api, keys["a"])
    common = {"model": TINY, "prompt": prompts, "echo": True, "n": 2, "max_tokens": 8, "seed": 4, "extra_body": FAST}
    answer = client.completions.create(**common)
    choices = sorted(answer.choices, key=lambda c: c.index)
    assert [c.index for c in choices] == [0, 1, 2, 3]
    assert all(c.text.startswith(prompts[c.index // 2]) for c in choices), [c.text for c in choices]
    firsts: dict[int, str] = {}
    for chunk in client.completions.create(**common, stream=True):
        for choice in chunk.choices:
            firsts.setdefault(choice.index, choice.text)
    assert firsts == {0: "first", 1: "first", 2: "second one", 3: "second one"}


def test_echo_with_logprobs_is_a_bad_request_naming_echo(live_api, keys) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live_api, keys["a"]).completions.create(model=TINY, prompt="hello", echo=True, logprobs=1)
    assert caught.value.status_code == 400 and caught.value.param == "echo"
    assert caught.value.code == "unsupported_value" and "echo" in caught.value.message
    assert Client(live_api.url, keys["a"]).http.get(f"{live_api.url}/v1/jobs").json()["data"] == []


def test_a_suffix_is_filled_by_an_infill_job(live_api, keys) -> None:
    answer = sdk(live_api, keys["a"]).completions.create(
        model=TINY, prompt="def add(a, b):\n    return ", suffix="\n", max_tokens=6, extra_body=FAST
    )
    job = Client(live_api.url, keys["a"]).get(answer.id.removeprefix("cmpl-"))
    assert job["kind"] == "infill" and answer.choices[0].text == job["output"]["fills"][0]["text"]
    assert answer.usage.completion_tokens == 6 and answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"top_p": 0.5}, "top_p"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
    ],
)
def test_what_cannot_be_honoured_is_a_bad_request_naming_the_field(live_api, keys, kwargs, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live_api, keys["a"]).chat.completions.create(model=TINY, messages=HI, **kwargs)
    assert caught.value.status_code == 400 and caught.value.param == param and caught.value.code == "unsupported_value"


def test_models_list_as_the_sdk_types_them(live_api, keys) -> None:
    models = {m.id: m for m in sdk(live_api, keys["a"]).models.list()}
    assert isinstance(models[TINY].created, int) and models[TINY].owned_by == "public"
    assert sdk(live_api, keys["a"]).models.retrieve(TINY).id == TINY


def test_neutral_knobs_are_accepted(live_api, keys) -> None:
    answer = sdk(live_api, keys["a"]).chat.completions.create(
        model=TINY, messages=HI, max_tokens=8, top_p=1, frequency_penalty=0, presence_penalty=0, n=1,
        logprobs=False, user="u", metadata={"k": "v"}, store=False, extra_body=FAST,
    )  # fmt: skip
    assert answer.choices[0].logprobs is None and answer.choices[0].message.role == "assistant"


def test_an_idempotency_key_through_extra_headers_makes_one_job(live_api, keys) -> None:
    client = sdk(live_api, keys["a"])
    headers = {"Idempotency-Key": "sdk-1"}
    first = client.completions.create(model=TINY, prompt="hi", max_tokens=8, extra_headers=headers, extra_body=FAST)
    again = client.completions.create(model=TINY, prompt="hi", max_tokens=8, extra_headers=headers, extra_body=FAST)
    assert first.id == again.id and first.choices[0].text == again.choices[0].text
    assert len(Client(live_api.url, keys["a"]).http.get(f"{live_api.url}/v1/jobs").json()["data"]) == 1


def test_a_wait_that_times_out_is_not_resubmitted_by_the_sdk(settings, keys) -> None:
    """The SDK retries a 504 by resubmitting unless told not to: one request, one job, however many
    retries it is allowed. (A wait of 0 s ends at the first event, before any worker could finish.)"""
    with ApiServer(settings.with_(sync_wait_seconds=0.0)) as server:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(server, keys["a"], retries=2).completions.create(model=TINY, prompt="hi", max_tokens=8)
        assert caught.value.status_code == 504
        assert caught.value.response.headers["x-should-retry"] == "false"
        job_id = caught.value.body["job_id"]
        jobs = Client(server.url, keys["a"]).http.get(f"{server.url}/v1/jobs").json()["data"]
        assert [j["id"] for j in jobs] == [job_id]


def test_a_canceled_job_is_a_409_that_the_sdk_does_not_resubmit(live_api, keys) -> None:
    """An error about a job that exists names it and says not to retry: the SDK, allowed two retries,
    raises at once and leaves one job."""
    long = {"canvas": {"max_denoising_steps": 4000, "stability_threshold": 4096, "confidence_threshold": 1e-9}}
    caught: list[Exception] = []

    def call() -> None:
        try:
            sdk(live_api, keys["a"], retries=2).completions.create(
                model=TINY, prompt="x", max_tokens=8, extra_body=long
            )
        except openai.APIStatusError as exc:
            caught.append(exc)

    waiter = threading.Thread(target=call)
    waiter.start()
    client = Client(live_api.url, keys["a"])
    deadline = time.monotonic() + 30
    while not (jobs := client.http.get(f"{live_api.url}/v1/jobs").json()["data"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.wait(jobs[0]["id"], {"running"})
    client.cancel(jobs[0]["id"])
    waiter.join(60)
    (error,) = caught
    assert isinstance(error, openai.ConflictError) and error.response.headers["x-should-retry"] == "false"
    assert error.response.headers["x-canvas-job-id"] == jobs[0]["id"] == error.body["job_id"]
    assert len(client.http.get(f"{live_api.url}/v1/jobs").json()["data"]) == 1
