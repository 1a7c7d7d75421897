"""Live job events over server-sent events, from a real worker through Redis to an HTTP client."""

from __future__ import annotations

import json

import requests

from tests.conftest import TINY
from tests.e2e.live import Client
from tests.e2e.test_generation_jobs import LONG


def read_sse(response: requests.Response):
    event, data = None, []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and event is not None:
            yield event, json.loads("\n".join(data))
            event, data = None, []


def test_a_late_subscriber_gets_every_event_then_the_stream_ends(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="hello", params={"max_new_tokens": 70, "max_denoising_steps": 6})
    done = client.wait(job["id"])
    with client.http.get(f"{live_api.url}/v1/jobs/{job['id']}/events", stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = list(read_sse(response))
    kinds = [k for k, _ in events]
    statuses = [d["status"] for k, d in events if k == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert kinds[-1] == "done"
    assert events[-1][1]["id"] == job["id"]
    assert events[-1][1]["output"] == done["output"]
    canvases = [d for k, d in events if k == "canvas"]
    assert len(canvases) == done["stats"]["canvases"]
    assert [t for c in canvases for t in c["token_ids"]] == done["output"]["token_ids"]
    assert "".join(c["text"] for c in canvases) == done["output"]["text"]


def test_live_drafts_stream_while_running_and_cancel_ends_the_stream(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="watch me", params=LONG)
    drafts = []
    with client.http.get(f"{live_api.url}/v1/jobs/{job['id']}/events", stream=True, timeout=60) as response:
        for kind, data in read_sse(response):
            if kind == "draft":
                drafts.append(data)
                if len(drafts) == 3:
                    assert client.cancel(job["id"]).status_code == 200
            if kind == "done":
                final = data
                break
    assert len(drafts) >= 3
    assert all(len(d["token_ids"]) == 32 and isinstance(d["text"], str) for d in drafts)
    assert drafts[0]["step"] < drafts[-1]["step"]
    assert final["status"] == "canceled"


def test_another_tenants_events_are_404(live_api, keys) -> None:
    mine = Client(live_api.url, keys["a"]).submit(model=TINY, prompt="private", params={"max_new_tokens": 4})
    theirs = Client(live_api.url, keys["b"])
    assert theirs.http.get(f"{live_api.url}/v1/jobs/{mine['id']}/events", timeout=10).status_code == 404


def test_canvas_events_stop_at_a_stop_string_that_spans_two_canvases(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    params = {"max_new_tokens": 96, "max_denoising_steps": 6, "seed": 11}
    first, second = canvas_texts(client, live_api.url, client.submit(model=TINY, prompt="hello", params=params))[:2]
    assert first and second, "the tiny model's first canvases decode to some text"
    # The last character of canvas 1 and the first of canvas 2: without holding back a tail that could begin
    # the stop, canvas 1's event would already carry a character the final text does not have.
    stop, text = first[-1] + second[0], first + second
    assert text.index(stop) == len(first) - 1, "the stop first appears across the boundary"
    job = client.submit(model=TINY, prompt="hello", params={**params, "stop": [stop]})
    deltas = canvas_texts(client, live_api.url, job)
    done = client.wait(job["id"])
    assert done["output"]["text"] == text[: text.index(stop)]
    assert done["output"]["finish_reason"] == "stop"
    assert "".join(deltas) == done["output"]["text"]
    assert deltas[0] == first[:-1]  # canvas 1 held its last character back, and never sent it


def canvas_texts(client: Client, url: str, job: dict) -> list[str]:
    """The text deltas of a job's canvas events, read after it finished."""
    client.wait(job["id"])
    with client.http.get(f"{url}/v1/jobs/{job['id']}/events", stream=True, timeout=30) as response:
        return [d["text"] for k, d in read_sse(response) if k == "canvas"]
