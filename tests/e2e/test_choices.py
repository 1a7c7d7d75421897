"""Native generate jobs with `n` choices and `logprobs`, end to end: every choice is recorded with its seed
and log-probabilities, a canceled job with choices ends canceled (not as a partial answer), and each
choice's committed canvases stream under its own index."""

from __future__ import annotations

from tests.conftest import TINY
from tests.e2e.live import Client
from tests.e2e.test_job_events import read_sse

LONG = {"max_new_tokens": 32, "max_denoising_steps": 4000, "stability_threshold": 4096, "confidence_threshold": 1e-9}


def test_choices_are_recorded_with_their_seeds_and_logprobs(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    params = {"max_new_tokens": 40, "max_denoising_steps": 6, "seed": 20}
    job = client.wait(client.submit(model=TINY, prompt="hi", n=3, logprobs=2, params=params)["id"])
    assert job["status"] == "succeeded", job
    choices = job["output"]["choices"]
    assert [c["seed"] for c in choices] == [20, 21, 22]
    assert job["output"]["text"] == choices[0]["text"] and job["output"]["logprobs"] == choices[0]["logprobs"]
    for choice in choices:
        assert len(choice["logprobs"]) == len(choice["token_ids"])
        assert all(
            len(entry["top"]) == 2 and entry["top"][0]["token_id"] == entry["token_id"] for entry in choice["logprobs"]
        )
    assert job["stats"]["output_tokens"] == sum(len(c["token_ids"]) for c in choices)


def test_a_canceled_job_with_choices_ends_canceled(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="long", n=3, params=LONG)
    client.wait(job["id"], {"running"})
    assert client.cancel(job["id"]).status_code == 200
    done = client.wait(job["id"], timeout=30)
    assert done["status"] == "canceled" and done["output"]["finish_reason"] == "canceled"


def test_each_choices_canvases_stream_under_its_index(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="hi", n=2, params={"max_new_tokens": 70, "max_denoising_steps": 6})
    response = client.http.get(f"{live_api.url}/v1/jobs/{job['id']}/events", stream=True, timeout=60)
    texts = ["", ""]
    for kind, data in read_sse(response):
        if kind == "canvas":
            texts[data["index"]] += data["text"]
    done = client.get(job["id"])
    assert texts == [c["text"] for c in done["output"]["choices"]]
