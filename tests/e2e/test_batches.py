"""The Batch API end to end, driven by the official `openai` SDK against the real API server, Redis and a
generation worker with the tiny model: files.create(purpose="batch"), batches.create/retrieve/cancel/list,
files.content; the output lines are the jobs' answers in OpenAI's shape, and batch.completed arrives
signed (checked with `standardwebhooks`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from openai import NotFoundError, OpenAI
from standardwebhooks import Webhook

from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ApiServer, Client, serving_worker

FAST = {"max_denoising_steps": 6}
ENDED = {"completed", "failed", "expired", "cancelled"}


def sdk(url: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def completion_line(custom_id: str, prompt: str, max_tokens: int = 8, **canvas: object) -> dict:
    body = {"model": TINY, "prompt": prompt, "max_tokens": max_tokens, "canvas": {**FAST, **canvas}}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}


def chat_line(custom_id: str, text: str) -> dict:
    body = {"model": TINY, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "seed": 3, "canvas": FAST}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def start(client: OpenAI, lines: list[dict], endpoint: str, **extra: object):
    source = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h", **extra)


def wait_ended(client: OpenAI, batch_id: str, timeout: float = 45.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ENDED:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} still {client.batches.retrieve(batch_id).status} after {timeout}s")


def lines_of(client: OpenAI, file_id: str | None) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()] if file_id else []


def test_a_chat_batch_answers_every_line_in_openai_shape_and_says_so_by_webhook(live_api, keys, receiver) -> None:
    http = Client(live_api.url, keys["a"])
    hook = http.http.post(
        f"{live_api.url}/v1/webhook_endpoints",
        json={"url": receiver.script("/batches"), "events": ["batch.completed", "batch.failed", "job.succeeded"]},
        timeout=10,
    ).json()
    client = sdk(live_api.url, keys["a"])
    lines = [chat_line(f"q{i}", f"question {i}") for i in range(4)]
    created = start(client, lines, "/v1/chat/completions", metadata={"run": "e2e"})
    assert created.status == "in_progress" and created.request_counts.total == 4
    batch = wait_ended(client, created.id)
    assert batch.status == "completed" and batch.completed_at and batch.finalizing_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 0)
    assert batch.error_file_id is None and batch.metadata == {"run": "e2e"}
    output = lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["q0", "q1", "q2", "q3"]
    for line in output:
        job = http.get(line["response"]["request_id"])
        body = line["response"]["body"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert (
            job["status"] == "succeeded"
            and job["input"]["messages"][0]["content"] == f"question {line['custom_id'][1]}"
        )
        assert body["object"] == "chat.completion" and body["model"] == TINY
        assert body["choices"][0]["message"]["content"] == job["output"]["text"]
        assert body["usage"]["completion_tokens"] == len(job["output"]["token_ids"])
    received = receiver.wait_for("/batches", 1)[0]
    event = Webhook(hook["secret"]).verify(received.body, received.headers)
    assert event["type"] == "batch.completed" and event["data"]["id"] == batch.id
    assert event["data"]["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    # A failed batch is announced too (its file has a bad line: nothing ran).
    failed = start(client, [chat_line("x", "hi"), {"custom_id": "y"}], "/v1/chat/completions")
    assert failed.status == "failed" and failed.errors.data[0].line == 2
    received = receiver.wait_for("/batches", 2)[1]
    event = Webhook(hook["secret"]).verify(received.body, received.headers)
    assert event["type"] == "batch.failed" and event["data"]["id"] == failed.id
    # A batch's lines send no job.* events: the batch reports them.
    assert [json.loads(r.body)["type"] for r in receiver.at("/batches")] == ["batch.completed", "batch.failed"]


@contextmanager
def one_line_at_a_time(settings, backend, model_host) -> Iterator[ApiServer]:
    """An API server and a worker of their own (a Redis database of their own), both releasing one batch
    line at a time: every process that releases (the worker does, as it claims and finishes) has the cap."""
    url = settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 5}"
    settings = settings.with_(batch_max_in_flight=1, redis_url=url)
    redis.Redis.from_url(url).flushdb()
    try:
        with ApiServer(settings) as api, serving_worker(settings, model_host):
            yield api
    finally:
        redis.Redis.from_url(url).flushdb()


def test_a_cancelled_batch_keeps_what_finished_and_reports_the_rest(settings, backend, model_host, keys) -> None:
    with one_line_at_a_time(settings, backend, model_host) as api:  # most lines are still queued
        client = sdk(api.url, keys["a"])
        # Lines that run every step (about a second each), so the cancel lands before most have run.
        slow = {"max_denoising_steps": 48, "stability_threshold": 4096, "confidence_threshold": 1e-9}
        lines = [completion_line(f"c{i}", f"count {i}", max_tokens=40, **slow) for i in range(6)]
        created = start(client, lines, "/v1/completions")
        deadline = time.monotonic() + 30
        while client.batches.retrieve(created.id).request_counts.completed < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        cancelling = client.batches.cancel(created.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
        batch = wait_ended(client, created.id)
        output, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert batch.status == "cancelled" and batch.cancelled_at
    counts = batch.request_counts
    assert counts.total == 6 and counts.completed >= 1 and counts.failed >= 3 and counts.completed + counts.failed == 6
    assert len(output) == counts.completed and all(
        line["response"]["body"]["object"] == "text_completion" for line in output
    )
    assert {line["custom_id"] for line in output + errors} == {f"c{i}" for i in range(6)}
    assert all(line["error"]["code"] == "batch_cancelled" for line in errors)


def test_a_batch_past_its_window_expires_its_waiting_lines(settings, backend, model_host, keys) -> None:
    with one_line_at_a_time(settings, backend, model_host) as api:
        client = sdk(api.url, keys["a"])
        # Lines that cannot settle early, so five of them one at a time outlast the 1 s window on any machine.
        slow = {"max_denoising_steps": 400, "stability_threshold": 4096, "confidence_threshold": 1e-9}
        lines = [completion_line(f"e{i}", f"late {i}", max_tokens=40, **slow) for i in range(5)]
        source = client.files.create(file=("late.jsonl", jsonl(lines)), purpose="batch")
        # A window shorter than OpenAI's 24h (Canvas's extension), so the test need not wait a day.
        created = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="1s")
        batch = wait_ended(client, created.id)
        errors = lines_of(client, batch.error_file_id)
    assert batch.status == "expired" and batch.expired_at
    assert errors and all(line["error"]["code"] == "batch_expired" for line in errors)
    assert batch.request_counts.completed + len(errors) == 5


def test_batches_belong_to_their_tenant_and_list_in_pages(live_api, keys) -> None:
    a, b = sdk(live_api.url, keys["a"]), sdk(live_api.url, keys["b"])
    bad = [{"custom_id": "only", "method": "POST"}]  # fails validation at once: no job runs
    made = [start(a, bad, "/v1/completions").id for _ in range(3)]
    page = a.batches.list(limit=2)
    assert [x.id for x in page.data] == made[::-1][:2] and page.has_more
    assert [x.id for x in a.batches.list(limit=2)] == made[::-1]  # the SDK follows `after` to the end
    assert list(b.batches.list()) == []
    with pytest.raises(NotFoundError):
        b.batches.retrieve(made[0])
    with pytest.raises(NotFoundError):
        b.batches.cancel(made[0])
    with pytest.raises(NotFoundError):
        b.files.content(a.batches.retrieve(made[0]).error_file_id)


def test_completion_lines_with_n_and_a_suffix_answer_as_the_route_does(live_api, keys) -> None:
    client, http = sdk(live_api.url, keys["a"]), Client(live_api.url, keys["a"])
    lines = [
        completion_line("two", "add: 1+2\n"),
        completion_line("infill", "def add(a, b):\n    return ", max_tokens=6),
    ]
    lines[0]["body"]["n"] = 2
    lines[1]["body"]["suffix"] = "\n"
    batch = wait_ended(client, start(client, lines, "/v1/completions").id)
    assert batch.status == "completed", batch.errors
    two, infill = lines_of(client, batch.output_file_id)
    assert [c["index"] for c in two["response"]["body"]["choices"]] == [0, 1]
    job = http.get(infill["response"]["request_id"])
    assert job["kind"] == "infill"
    assert infill["response"]["body"]["choices"][0]["text"] == job["output"]["fills"][0]["text"]


def test_echo_lines_answer_as_the_route_does_and_echo_with_logprobs_is_a_bad_line(live_api, keys) -> None:
    client = sdk(live_api.url, keys["a"])
    lines = [completion_line("echo", "add: 1+2\n"), completion_line("both", "add: 2+2\n")]
    lines[0]["body"] |= {"echo": True, "n": 2}
    lines[1]["body"] |= {"echo": True, "logprobs": 1}
    refused = start(client, lines, "/v1/completions")
    assert refused.status == "failed"
    (error,) = refused.errors.data
    assert (error.line, error.param, error.code) == (2, "body.echo", "invalid_request") and "echo" in error.message
    batch = wait_ended(client, start(client, lines[:1], "/v1/completions").id)
    assert batch.status == "completed", batch.errors
    (line,) = lines_of(client, batch.output_file_id)
    job = Client(live_api.url, keys["a"]).get(line["response"]["request_id"])
    texts = [c["text"] for c in line["response"]["body"]["choices"]]
    assert texts == ["add: 1+2\n" + c["text"] for c in job["output"]["choices"]]


def test_a_batch_validated_in_the_background_answers_validating_then_runs(settings, live_worker, keys) -> None:
    # batch_inline_lines 0: every file is validated after the create request, as OpenAI does.
    with ApiServer(settings.with_(batch_inline_lines=0)) as api:
        client = sdk(api.url, keys["a"])
        created = start(client, [completion_line(f"v{i}", f"add: {i}+1\n") for i in range(3)], "/v1/completions")
        assert created.status == "validating" and created.in_progress_at is None
        assert created.request_counts.total == 0
        batch = wait_ended(client, created.id)
        failed = wait_ended(client, start(client, [{"custom_id": "y"}], "/v1/completions").id)
        output = lines_of(client, batch.output_file_id)
    assert batch.status == "completed" and batch.in_progress_at and batch.request_counts.completed == 3
    assert [line["custom_id"] for line in output] == ["v0", "v1", "v2"]
    assert failed.status == "failed" and failed.errors.data[0].line == 1 and failed.error_file_id


def test_allow_partial_runs_the_good_lines_and_reports_the_bad_ones(live_api, keys) -> None:
    client = sdk(live_api.url, keys["a"])
    lines = [completion_line("p0", "add: 1+1\n"), {"custom_id": "bad"}, completion_line("p2", "add: 2+2\n")]
    lines.append(completion_line("knob", "add: 3+3\n", max_tokens=8) | {"url": "/v1/chat/completions"})
    # Canvas's extension, as the SDK sends fields it does not know: extra_body.
    created = start(client, lines, "/v1/completions", extra_body={"allow_partial": True})
    assert created.status == "in_progress" and [e.line for e in created.errors.data] == [2, 4]
    assert (created.request_counts.total, created.request_counts.failed) == (4, 2)
    batch = wait_ended(client, created.id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 2, 2)
    assert [line["custom_id"] for line in lines_of(client, batch.output_file_id)] == ["p0", "p2"]
    errors = lines_of(client, batch.error_file_id)
    assert [(e["custom_id"], e["error"]["line"], e["error"]["code"]) for e in errors] == [
        ("bad", 2, "invalid_request"),
        ("knob", 4, "mismatched_url"),
    ]
    # Without it, the same file fails whole, with the same lines reported, and nothing runs.
    whole = start(client, lines, "/v1/completions")
    assert whole.status == "failed" and [e.line for e in whole.errors.data] == [2, 4]
