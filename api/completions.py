"""OpenAI-compatible POST /v1/completions and /v1/chat/completions, on top of the job machinery.

Each request becomes a `generate` job, recorded, queued, retried, listed and webhooked like any other
(Idempotency-Key included), so OpenAI clients work unchanged. Without `stream` the request waits for the job
and answers in OpenAI's shape; a wait longer than `CANVAS_SYNC_WAIT_SECONDS` gets a 504 naming the job,
which goes on (GET /v1/jobs/{id}). With `stream` the job's committed canvases are relayed as OpenAI chunks
(server-sent events ending with `data: [DONE]`), holding back a tail that could begin a stop string, and
the text is cut at the first stop string however it was tokenized. Errors about a job that
exists carry `x-should-retry: false`: a retry would submit a second job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, stream_with_context

from api.auth import authenticate_request
from api.bodies import read_json_object
from api.completion_schemas import ChatCompletionCreate, CompletionCreate
from api.errors import error_response
from api.job_events import KEEPALIVE_SECONDS, follow_job
from api.jobs import accept_job
from api.long_requests import take_slot
from api.openapi import describe
from api.response_schemas import OpenAICompletion
from api.state import events_client, release_db_session, settings
from shared.openai_responses import Shape, completion_body, error_status, final_text, job_error, usage

bp = Blueprint("completions", __name__, url_prefix="/v1")
bp.before_request(authenticate_request)


@bp.post("/completions")
@describe(
    "A text completion (OpenAI-compatible)", body=CompletionCreate, responses={200: OpenAICompletion}, also_events=True
)
def create_completion() -> Response:
    return _serve(CompletionCreate, chat=False)


@bp.post("/chat/completions")
@describe(
    "A chat completion (OpenAI-compatible)",
    body=ChatCompletionCreate,
    responses={200: OpenAICompletion},
    also_events=True,
)
def create_chat_completion() -> Response:
    return _serve(ChatCompletionCreate, chat=True)


def _serve(schema: type[CompletionCreate] | type[ChatCompletionCreate], chat: bool) -> Response:
    raw = read_json_object()
    body = schema.model_validate(raw)
    release = take_slot()  # before the job exists: a 503 here records nothing
    try:
        response = _answer(body, raw, chat)
    except BaseException:
        release()
        raise
    if body.stream:
        response.call_on_close(release)  # the stream ended, or the client went away
    else:
        release()
    return response


def _answer(body: CompletionCreate | ChatCompletionCreate, raw: dict[str, Any], chat: bool) -> Response:
    job, _created = accept_job(body.job(), raw)
    release_db_session()  # the wait or the stream below must not hold a database connection
    shape = Shape(chat, job.id, job.model, int(job.created_at.timestamp()))  # UTCDateTime: always aware
    quiet = KEEPALIVE_SECONDS if body.stream else 1.0  # a wait checks its deadline every second
    events = follow_job(settings().database_url, events_client(), job.id, "0-0", keepalive=quiet)
    if body.stream:
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(events, shape, with_usage)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(stream_with_context(chunks), mimetype="text/event-stream", headers=headers)
    finished = _wait(events, time.monotonic() + settings().sync_wait_seconds)
    if finished is None:
        message = f"job {job.id} is still running; it goes on: GET /v1/jobs/{job.id}"
        return no_retry(error_response(504, "timeout", message))
    if finished["status"] != "succeeded":
        return no_retry(_job_error(finished))
    return jsonify(completion_body(shape, finished))


def no_retry(response: Response) -> Response:
    """OpenAI's SDKs retry 409 and 5xx by resubmitting, which here would make a second job: they honour this."""
    response.headers["x-should-retry"] = "false"
    return response


def _wait(events: Iterator[tuple[str, Any, Any]], deadline: float) -> dict[str, Any] | None:
    """The finished job's view, or None once `deadline` passes (checked at every event and keep-alive)."""
    for kind, _event_id, data in events:
        if kind == "done":
            return data
        if time.monotonic() > deadline:
            return None
    return None


def _job_error(job: dict[str, Any]) -> Response:
    """A job that did not succeed, as an error response: canceled 409, expired 504, failed 500."""
    return error_response(error_status(job), *job_error(job))


def _chunks(events: Iterator[tuple[str, Any, Any]], shape: Shape, with_usage: bool) -> Iterator[str]:
    """OpenAI chunks from the job's canvas events, relayed as the worker assembled them (it holds back what
    could begin a stop string); the final text decides what the last chunk adds. If the job is retried (a
    lost worker), its new attempt's text is followed from its start, and only what goes beyond the text
    already sent is relayed."""
    sent, current = "", ""  # text relayed; text of the current attempt so far
    if shape.chat:
        yield _data({**shape.envelope(chunk=True), "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    for kind, _event_id, data in events:
        if kind == "keepalive":
            yield ": keep-alive\n\n"
        elif kind == "status" and data.get("status") == "running":
            current = ""  # a (new) attempt starts from the first canvas
        elif kind == "canvas":
            current += data.get("text", "")
            if len(current) > len(sent) and current.startswith(sent):
                delta, sent = current[len(sent) :], current
                yield _data({**shape.envelope(chunk=True), "choices": [shape.choice(delta, None, chunk=True)]})
        elif kind == "done":
            yield from _last_chunks(data, shape, sent, with_usage)
            break
    yield "data: [DONE]\n\n"


def _last_chunks(job: dict[str, Any], shape: Shape, sent: str, with_usage: bool) -> Iterator[str]:
    if job.get("status") != "succeeded":
        type_, message = job_error(job)
        yield _data({"error": {"type": type_, "message": message, "param": None}})
        return
    text, finish = final_text(job["output"])
    if not text.startswith(sent):  # a retried attempt wrote other text than the one relayed: say so
        message = f"job {job['id']} was retried and its text changed; GET /v1/jobs/{job['id']} has the output"
        yield _data({"error": {"type": "output_changed", "message": message, "param": None}})
        return
    yield _data({**shape.envelope(chunk=True), "choices": [shape.choice(text[len(sent) :], finish, chunk=True)]})
    if with_usage:
        yield _data({**shape.envelope(chunk=True), "choices": [], "usage": usage(job)})


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
