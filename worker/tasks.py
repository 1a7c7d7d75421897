"""Running a generation job: claim the row, hand it to the model's engine, record the outcome.

Many jobs run at once in one worker (Celery's thread pool); each waits on its engine handle while its
JobWatch renews the lease and watches for a cancel. Thin over shared/ and the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.contracts import cut_at_stop
from shared.db import session_scope
from shared.jobs import claim, get_job, transition
from shared.models import ModelRecord, utcnow
from shared.settings import Settings
from shared.states import FinishReason, JobStatus
from shared.webhooks import record_canvas_event, wants_canvas_events
from worker.engine import EngineResult, Request, SamplingParams
from worker.events import EventPublisher
from worker.host import LoadedModel, ModelHost
from worker.job_kinds import constrain, pick_try, shape_output, try_seeds
from worker.job_watch import JobWatch
from worker.stops import stop_within

log = logging.getLogger(__name__)
SAMPLING_FIELDS = (
    "max_new_tokens",
    "max_denoising_steps",
    "entropy_bound",
    "t_min",
    "t_max",
    "stability_threshold",
    "confidence_threshold",
    "seed",
    "order",
)


def run_generation_job(settings: Settings, host: ModelHost, job_id: str, events: EventPublisher | None = None) -> str:
    """Run one delivery of a job. Returns what happened (for logs): a duplicate delivery does nothing."""
    with session_scope(settings.database_url) as session:
        attempt = claim(session, job_id, host.hostname, settings.lease_seconds)
        if attempt is None:
            log.info("job %s is not queued (a duplicate or canceled delivery, or past its deadline): skipped", job_id)
            return "skipped"
        job = get_job(session, job_id)
        model_name, input_ids, params = job.model, list(job.input_ids), dict(job.params)
        kind, plan = job.kind, dict(job.input or {})
        record = session.get(ModelRecord, job.model)
        adapter = (record.name, record.adapter_path) if record is not None and record.adapter_path else None
        derived = (
            (record.name, record.path, record.eos_token_ids) if record and record.base_model and not adapter else None
        )
        if adapter is not None:
            model_name = record.base_model
        queued_at, started_at = job.created_at, job.started_at
        canvas_webhooks = wants_canvas_events(session, job_id)
    _status(events, job_id, JobStatus.RUNNING, attempt=attempt)
    loaded = host.get(model_name)
    if loaded is None and derived is not None:  # a full fine-tune routed to its base model's workers
        loaded = host.ensure(*derived, max_rows=settings.engine_max_rows, memory_bytes=settings.engine_memory_bytes)
    if loaded is None:
        error = {"type": "model_not_loaded", "message": f"model {model_name!r} is not loaded here"}
        return _finish(settings, events, job_id, attempt, JobStatus.FAILED, error=error)
    if adapter is not None:
        try:
            loaded.ensure_adapter(*adapter)
        except Exception as exc:
            log.exception("adapter %s could not be loaded", adapter[0])
            error = {"type": "adapter_not_loaded", "message": f"adapter {adapter[0]!r}: {exc}"}
            return _finish(settings, events, job_id, attempt, JobStatus.FAILED, error=error)
    request = engine_request(
        job_id, input_ids, params, loaded, settings.draft_interval_seconds, adapter[0] if adapter else None
    )
    requests = tries(constrain(kind, plan, request, loaded.tokenizer), plan.get("tries", 1))
    decide = _decider(kind, plan, loaded)
    watch = JobWatch(settings, job_id, attempt)
    watch.start()
    try:
        sink = _canvas_webhook_sink(settings, job_id) if canvas_webhooks else None
        stops = (params.get("stop") or ()) if kind == "generate" else ()
        on_event = events.engine_callback(job_id, loaded.decode, sink, stops) if events else None
        chosen, result = _wait(loaded, requests, watch, on_event, decide)
        if events is not None:
            events.flush()  # canvas events (and their webhooks) before the final status
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
        return _finish(settings, events, job_id, attempt, JobStatus.FAILED, error=error)
    finally:
        watch.stop()
    if result.finish_reason == FinishReason.CANCELED.value:
        return _record_stop(settings, events, job_id, attempt, watch)
    output = shape_output(kind, plan, result, loaded.decode)
    if kind == "generate":
        output["text"], stopped = cut_at_stop(output["text"], params.get("stop") or [])
        output["finish_reason"] = FinishReason.STOP.value if stopped else output["finish_reason"]
    if kind == "sudoku":
        seed = requests[chosen].params.seed
        output.update({"tries": len(requests), "try": chosen, "seed": seed, "rules": bool(plan.get("rules"))})
    stats = _stats(result, queued_at, started_at, attempt)
    if _finish(settings, events, job_id, attempt, JobStatus.SUCCEEDED, output=output, stats=stats) != "lost":
        return "succeeded"
    # Canceled after the last step: keep what was made, but honour the cancel.
    output["finish_reason"] = FinishReason.CANCELED.value
    return _finish(settings, events, job_id, attempt, JobStatus.CANCELED, stats=stats, output=output)


def _canvas_webhook_sink(settings: Settings, job_id: str) -> Any:
    def record(data: dict[str, Any]) -> None:
        with session_scope(settings.database_url) as session:
            record_canvas_event(session, job_id, {k: data[k] for k in ("canvas", "text", "token_ids") if k in data})

    return record


def engine_request(
    job_id: str,
    input_ids: list[int],
    params: dict[str, Any],
    loaded: LoadedModel,
    draft_interval: float,
    adapter: str | None = None,
) -> Request:
    """The job's engine request. Stop strings are matched on the decoded text (`worker.stops`), so they count
    however the tokenizer splits them; `shape_output` then cuts the text before the first one."""
    fields = {k: params[k] for k in SAMPLING_FIELDS if k in params}  # jobs recorded before a field existed lack it
    return Request(
        job_id,
        tuple(input_ids),
        SamplingParams(**fields),
        loaded.eos_ids,
        stop_within=stop_within(loaded.decode, params.get("stop") or ()),
        draft_interval=draft_interval,
        adapter=adapter,
    )


def tries(request: Request, count: int) -> list[Request]:
    """The job's request, and for a Sudoku job with `tries` > 1 copies with the next seeds (try i: seed + i).
    Every try's drafts are streamed, each marked with its `try` (`_tagged`)."""
    seeds = try_seeds(request.params.seed, count)
    return [request] + [
        replace(request, request_id=f"{request.request_id}/try{i}", params=replace(request.params, seed=seed))
        for i, seed in enumerate(seeds[1:], start=1)
    ]


Decide = Callable[[list[EngineResult | None]], tuple[int, bool] | None]


def _decider(kind: str, plan: dict[str, Any], loaded: LoadedModel) -> Decide:
    """(which try's result answers the job, whether it is a real answer) once that is known, else None.
    A Sudoku answer is real when its grid is valid; a single try's result always is."""
    if kind != "sudoku":
        return lambda results: (0, True) if results[0] is not None else None

    def decide(results: list[EngineResult | None]) -> tuple[int, bool] | None:
        outputs = [shape_output(kind, plan, r, loaded.decode) if r else None for r in results]
        chosen = pick_try(outputs)
        return None if chosen is None else (chosen, bool(outputs[chosen]["valid"]))  # type: ignore[index]

    return decide


def _tagged(on_event: Any, index: int, count: int) -> Any:
    """Try `index`'s event callback: with several tries, every try's drafts stream, each marked with its
    `try`; only the first try's committed canvases do (their text deltas add up to one output)."""
    if on_event is None or count == 1:
        return on_event if index == 0 else None

    def tagged(request_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "draft":
            on_event(request_id, kind, {**data, "try": index})
        elif index == 0:
            on_event(request_id, kind, data)

    return tagged


def _wait(
    loaded: LoadedModel, requests: list[Request], watch: JobWatch, on_event: Any, decide: Decide
) -> tuple[int, EngineResult]:
    """Submit every try and wait until `decide` picks one; the tries still running then are canceled
    (also when a try fails: its error fails the job). When the job must stop, every try is canceled, and
    unless a valid answer was already there, the result says `canceled` (so a timeout stays a timeout)."""
    callbacks = [_tagged(on_event, i, len(requests)) for i in range(len(requests))]
    handles = [loaded.engine.submit(r, on_event=callbacks[i]) for i, r in enumerate(requests)]
    asked = False
    try:
        while True:
            if not asked and watch.should_stop():
                for request in requests:
                    loaded.engine.cancel(request.request_id)
                asked = True
            results = [h.wait(0) if h.done else None for h in handles]
            decided = decide(results)
            if decided is not None:
                break
            running = next((h for h in handles if not h.done), None)
            if running is not None:  # None: the last one finished since `results` was read
                running.wait_done(0.05)
    finally:
        for request, handle in zip(requests, handles, strict=True):
            if not handle.done:
                loaded.engine.cancel(request.request_id)
    chosen, real = decided
    if asked and not real:
        stopped = next((r for r in results if r is not None and r.finish_reason == FinishReason.CANCELED.value), None)
        return chosen, stopped or results[chosen]  # type: ignore[return-value]
    return chosen, results[chosen]  # type: ignore[return-value]


def _record_stop(settings: Settings, events: EventPublisher | None, job_id: str, attempt: int, watch: JobWatch) -> str:
    """Record why generation stopped early: lease lost (nothing to write), timeout, or cancel."""
    if watch.lease_lost.is_set():
        return "lease lost"
    if watch.timed_out and not watch.cancel_requested.is_set():
        error = {"type": "timeout", "message": f"the job ran longer than {settings.max_job_seconds} s"}
        _finish(settings, events, job_id, attempt, JobStatus.FAILED, error=error)
        return "timed out"
    output = {"text": "", "token_ids": [], "finish_reason": FinishReason.CANCELED.value}
    return _finish(settings, events, job_id, attempt, JobStatus.CANCELED, output=output)


def _stats(result: EngineResult, queued_at: Any, started_at: Any, attempt: int) -> dict[str, Any]:
    finished = utcnow()
    return {
        "queue_ms": round((started_at - queued_at).total_seconds() * 1000, 1),
        "run_ms": round((finished - started_at).total_seconds() * 1000, 1),
        "denoising_steps": result.denoising_steps,
        "canvases": result.canvases,
        "tokens_per_forward": result.tokens_per_forward,
        "prompt_tokens": result.prompt_tokens,
        "output_tokens": len(result.token_ids),
        "attempt": attempt,
    }


def _status(events: EventPublisher | None, job_id: str, status: JobStatus, **data: Any) -> None:
    if events is not None:
        events.publish(job_id, "status", {"status": status.value, **data})


def _finish(
    settings: Settings, events: EventPublisher | None, job_id: str, attempt: int, to: JobStatus, **values: Any
) -> str:
    """Write the outcome if this attempt still owns the job; publish it. Returns the status or 'lost'."""
    with session_scope(settings.database_url) as session:
        done = transition(session, job_id, to, attempt=attempt, finished_at=utcnow(), lease_expires_at=None, **values)
    if not done:
        return "lost"
    _status(events, job_id, to, **{k: v for k, v in values.items() if k in ("error",)})
    return to.value
