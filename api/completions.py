"""OpenAI-compatible POST /v1/completions and /v1/chat/completions, on top of the job machinery.

Each request becomes a job (`generate`; `infill` for a completion with `suffix`), recorded, queued, retried,
listed and webhooked like any other (Idempotency-Key included), so OpenAI clients work unchanged. Without
`stream` the request waits for the job and answers in OpenAI's shape; a wait longer than
`CANVAS_SYNC_WAIT_SECONDS` (50 s by default, below common proxies' 60 s idle timeout) gets a 504 naming the
job, which goes on (GET /v1/jobs/{id}). With `stream` the job's committed canvases are relayed as OpenAI
chunks (server-sent events ending with `data: [DONE]`), one `index` per choice, holding back a tail that
could begin a stop string, and the text is cut at the first stop string however it was tokenized. Errors
about a job that exists carry `x-should-retry: false` and its id: a retry would submit a second job.
Errors are in OpenAI's shape, bad input a 400 (api/errors.py).

A completion with several prompts (`prompt: ["a", "b"]` or token-id lists, at most 20) makes one job per
prompt and answers once all are done, choice `index` = prompt_index * n + choice_index, usage summed; the
`x-canvas-job-id` header lists the jobs, comma-separated. Streamed, the jobs' chunks are relayed one job
after the other, each under its global index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, stream_with_context

from api.auth import authenticate_request
from api.bodies import read_json_object
from api.completion_schemas import ChatCompletionCreate, CompletionCreate
from api.errors import error_response, register_openai_error_handlers
from api.job_events import KEEPALIVE_SECONDS, follow_job
from api.job_kinds import plan_job
from api.jobs import accept_job
from api.long_requests import hold_until_end, take_slot
from api.models import visible_model
from api.openapi import IDEMPOTENCY_KEY, describe
from api.response_schemas import ErrorBody, OpenAICompletion
from api.state import db_session, events_client, release_db_session, settings
from shared.errors import InvalidRequest
from shared.openai_responses import Shape, answers, completion_body, echoed, error_status, job_error, usage

bp = Blueprint("completions", __name__, url_prefix="/v1")
bp.before_request(authenticate_request)
register_openai_error_handlers(bp)
JOB_ID_HEADER = "x-canvas-job-id"
Usage = dict[str, int]


@bp.after_request
def name_the_job(response: Response) -> Response:
    """Once a request's job exists, every answer names it, and an error answer (a timeout, a failed job, a
    database or Redis error while waiting) says not to retry: OpenAI's SDKs retry 408, 409, 429 and 5xx by
    resubmitting, which here would make a second job. They honour `x-should-retry`."""
    job_id = g.get("canvas_job_id")
    if job_id:
        response.headers[JOB_ID_HEADER] = job_id
        if response.status_code >= 400:
            response.headers["x-should-retry"] = "false"
    return response


@bp.post("/completions")
@describe(
    "A text completion (OpenAI-compatible)",
    body=CompletionCreate,
    responses={200: OpenAICompletion, 504: ErrorBody},
    headers=[IDEMPOTENCY_KEY],
    also_events=True,
)
def create_completion() -> Response:
    return _serve(CompletionCreate, chat=False)


@bp.post("/chat/completions")
@describe(
    "A chat completion (OpenAI-compatible)",
    body=ChatCompletionCreate,
    responses={200: OpenAICompletion, 504: ErrorBody},
    headers=[IDEMPOTENCY_KEY],
    also_events=True,
)
def create_chat_completion() -> Response:
    return _serve(ChatCompletionCreate, chat=True)


def _serve(schema: type[CompletionCreate] | type[ChatCompletionCreate], chat: bool) -> Response:
    raw = read_json_object()
    body = schema.model_validate(raw)
    jobs = body.jobs()  # every check of the body before a slot is taken
    release = take_slot()  # before the job exists: a 503 here records nothing
    try:
        response = _answer(body, jobs[0], raw, chat) if len(jobs) == 1 else _answer_several(body, jobs, raw)
    except BaseException:
        release()
        raise
    if body.streaming:
        hold_until_end(response, release)
    else:
        release()
    return response


def _answer(body: CompletionCreate | ChatCompletionCreate, request: Any, raw: dict[str, Any], chat: bool) -> Response:
    job, _created = accept_job(request, raw)
    g.canvas_job_id = job.id  # from here on, answers name it and say not to retry (name_the_job)
    release_db_session()  # the wait or the stream below must not hold a database connection
    infill = isinstance(body, CompletionCreate) and body.infill
    created = int(job.created_at.timestamp())  # UTCDateTime: always aware
    shape = Shape(chat, job.id, job.model, created, body.choices, infill)
    quiet = KEEPALIVE_SECONDS if body.streaming else 1.0  # a wait checks its deadline every second
    events = follow_job(settings().database_url, events_client(), job.id, "0-0", keepalive=quiet)
    if body.streaming:
        return _stream(_chunks([events], shape, _with_usage(body), [echoed(job.input)]))
    finished = _wait(events, time.monotonic() + settings().sync_wait_seconds)
    if finished is None:
        return _timeout([job.id])
    if finished["status"] != "succeeded":
        return _job_error(finished)
    return jsonify(completion_body(shape, finished))


def _answer_several(
    body: CompletionCreate | ChatCompletionCreate, requests: list[Any], raw: dict[str, Any]
) -> Response:
    """A completion with several prompts: every prompt is planned first (a prompt that does
    not fit the model is a 400 before any job exists), then one job per prompt is accepted, each with the
    request's Idempotency-Key and its index (`key#i`), so a replay finds them all. A rate limit reached part
    way leaves the earlier prompts' jobs accepted; its 429 names them (a retry with the same key reuses
    them). The answer waits for all of them within one deadline, or streams them one after the other."""
    session = db_session()
    for i, request in enumerate(requests):
        try:
            plan_job(request, visible_model(session, request.model))
        except InvalidRequest as exc:  # name the prompt: prompt.1, not input_ids
            raise type(exc)(f"prompt {i}: {exc.message}", f"prompt.{i}") from None
    jobs = []
    for i, request in enumerate(requests):
        job, _created = accept_job(request, raw, part=i)
        jobs.append(job)
        g.canvas_job_id = ",".join(j.id for j in jobs)  # answers name every accepted job (name_the_job)
    release_db_session()
    created = int(jobs[0].created_at.timestamp())
    shape = Shape(
        False, jobs[0].id, jobs[0].model, created, body.choices, isinstance(body, CompletionCreate) and body.infill
    )
    if body.streaming:  # each job's events wait in its stream until its turn to be relayed
        streams = [follow_job(settings().database_url, events_client(), j.id, "0-0") for j in jobs]
        return _stream(_chunks(streams, shape, _with_usage(body), [echoed(j.input) for j in jobs]))
    deadline = time.monotonic() + settings().sync_wait_seconds
    finished = []
    for job in jobs:
        events = follow_job(settings().database_url, events_client(), job.id, "0-0", keepalive=1.0)
        view = _wait(events, deadline)
        if view is None:
            return _timeout([j.id for j in jobs])
        if view["status"] != "succeeded":
            return _job_error(view)
        finished.append(view)
    return jsonify(completion_body(shape, *finished))


def _timeout(job_ids: list[str]) -> Response:
    """A 504 naming the jobs still running: they go on."""
    wait = settings().sync_wait_seconds
    if len(job_ids) == 1:
        (job_id,) = job_ids
        message = (
            f"job {job_id} is still running after {wait:g} s; it goes on: "
            f"GET /v1/jobs/{job_id} (or stream it: stream=true, or retry with the same Idempotency-Key)"
        )
        return error_response(504, "timeout", message, code="timeout", job_id=job_id)
    named = ", ".join(job_ids)
    message = (
        f"jobs {named} (one per prompt) are not all finished after {wait:g} s; they go on: "
        "GET /v1/jobs/{id} for each (or retry with the same Idempotency-Key)"
    )
    return error_response(504, "timeout", message, code="timeout", job_id=job_ids[0], job_ids=job_ids)


def _with_usage(body: CompletionCreate | ChatCompletionCreate) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _stream(chunks: Iterator[str]) -> Response:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(chunks), mimetype="text/event-stream", headers=headers)


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
    return error_response(error_status(job), *job_error(job), code=f"job_{job['status']}", job_id=job.get("id"))


def _chunks(
    streams: list[Iterator[tuple[str, Any, Any]]], shape: Shape, with_usage: bool, prompts: list[str] | None = None
) -> Iterator[str]:
    """OpenAI chunks from the jobs' canvas events: one job per prompt (usually one), relayed one job after
    the other (a later job's events wait in its stream), its choice i under `index` prompt_index * n + i;
    then the usage of them all (with `with_usage`) and `[DONE]`. `prompts`: per job, the text each of its
    choices begins with (`echo`; "" for none), sent as each choice's first chunk when the job's turn comes."""
    if shape.chat:
        roles = [
            {"index": i, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}
            for i in range(shape.choices)
        ]
        yield _data({**shape.envelope(chunk=True), "choices": roles})
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for p, events in enumerate(streams):
        if prompts and prompts[p]:
            for i in range(shape.choices):
                echo = shape.choice(prompts[p], None, chunk=True, index=p * shape.choices + i)
                yield _data({**shape.envelope(chunk=True), "choices": [echo]})
        counted = yield from _relay(events, shape, p * shape.choices)
        if counted is None:  # an error chunk ended the stream
            break
        for name, count in counted.items():
            total[name] += count
    else:
        if with_usage:
            yield _data({**shape.envelope(chunk=True), "choices": [], "usage": total})
    yield "data: [DONE]\n\n"


def _relay(events: Iterator[tuple[str, Any, Any]], shape: Shape, first: int) -> Generator[str, None, Usage | None]:
    """One job's chunks, relayed as the worker assembled them (it holds back what could begin a stop
    string), its choice i under index `first` + i; each choice's final text decides what its last chunk
    adds. If the job is retried (a lost worker), its new attempt's text is followed from its start, and only
    what goes beyond the text already sent is relayed. Returns the job's usage, or None if it did not
    succeed (its error chunk was sent) or its events ended first."""
    sent = [""] * shape.choices  # text relayed per choice
    current = [""] * shape.choices  # text of the current attempt so far, per choice
    for kind, _event_id, data in events:
        if kind == "keepalive":
            yield ": keep-alive\n\n"
        elif kind == "status" and data.get("status") == "running":
            current = [""] * shape.choices  # a (new) attempt starts from the first canvas
        elif kind == "canvas" and not shape.infill:
            i = data.get("index", 0)
            if not 0 <= i < shape.choices:
                continue
            current[i] += data.get("text", "")
            if len(current[i]) > len(sent[i]) and current[i].startswith(sent[i]):
                delta, sent[i] = current[i][len(sent[i]) :], current[i]
                chunk = shape.choice(delta, None, chunk=True, index=first + i)
                yield _data({**shape.envelope(chunk=True), "choices": [chunk]})
        elif kind == "done":
            return (yield from _last_chunks(data, shape, sent, first))
    return None


def _last_chunks(job: dict[str, Any], shape: Shape, sent: list[str], first: int) -> Generator[str, None, Usage | None]:
    if job.get("status") != "succeeded":
        type_, message = job_error(job)
        yield _data({"error": {"type": type_, "message": message, "param": None, "code": f"job_{job.get('status')}"}})
        return None
    choices = answers(job["output"], shape.infill)
    for i, answer in enumerate(choices):
        if not answer.text.startswith(sent[i]):  # a retried attempt wrote other text than the one relayed
            message = f"job {job['id']} was retried and its text changed; GET /v1/jobs/{job['id']} has the output"
            yield _data(
                {"error": {"type": "output_changed", "message": message, "param": None, "code": "output_changed"}}
            )
            return None
    for i, answer in enumerate(choices):
        rest = answer.text[len(sent[i]) :]
        last = shape.choice(rest, answer.finish, chunk=True, index=first + i, logprobs=answer.logprobs)
        yield _data({**shape.envelope(chunk=True), "choices": [last]})
    return usage(job, choices)


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
