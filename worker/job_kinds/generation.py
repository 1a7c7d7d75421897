"""What the denoising kinds share: find the job's model (or adapter) on this worker, submit its engine
requests, wait while the lease holds, and report statistics. A kind supplies how its plan becomes
requests (`prepare`), which finished request answers (`decide`) and the shape of its output (`shape`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import Any, ClassVar

from pydantic import BaseModel

from shared.contracts import GenerationParams
from shared.db import session_scope
from shared.job_errors import JobError, JobErrorCode
from shared.metrics import TOKENS_PER_FORWARD
from shared.models import ModelRecord
from shared.states import FinishReason
from shared.webhooks import record_canvas_event, wants_canvas_events
from worker.engine import EngineResult, Request, SamplingParams
from worker.host import LoadedModel
from worker.job_watch import JobWatch
from worker.lifecycle import ClaimedJob, Outcome, WorkerRuntime, run_stats
from worker.model_cache import Interrupted
from worker.text_assembly import TextAssembler

Decision = tuple[int, bool] | None  # (which request answers, whether its answer is a real one), or undecided
EventCallback = Callable[[str, str, dict[str, Any]], None]


def sampling_params(params: GenerationParams) -> SamplingParams:
    """The engine's parameters of a job: every field the engine declares, taken from the job's (one
    declaration, GenerationParams; the engine's dataclass only names what it runs with)."""
    return SamplingParams(**{f.name: getattr(params, f.name) for f in fields(SamplingParams)})


class GenerationExecutor:
    """The lifecycle's executor for a kind that denoises. Subclasses set `plan_model` and override
    `prepare`, `decide` and `shape` as their kind needs."""

    plan_model: ClassVar[type[BaseModel]]

    def canceled_output(self) -> dict[str, Any] | None:
        return {"text": "", "token_ids": [], "finish_reason": FinishReason.CANCELED.value}

    def stops(self, params: GenerationParams) -> list[str]:
        """The stop strings the job's text ends at (only free generation takes them)."""
        return []

    def prepare(self, plan: Any, request: Request, loaded: LoadedModel) -> list[Request]:
        """The engine requests of the job: by default the one request as it is."""
        return [request]

    def decide(self, plan: Any, results: list[EngineResult | None], loaded: LoadedModel) -> Decision:
        """Which finished request answers: by default the first, once it is done."""
        return (0, True) if results[0] is not None else None

    def answered(self, plan: Any, result: EngineResult, results: list[EngineResult | None]) -> list[EngineResult]:
        """The results the job's output holds (its statistics count them): by default the chosen one."""
        return [result]

    def streams_every_request(self, plan: Any) -> bool:
        """Whether each request's canvases stream as a choice of its own (`index`); by default only the
        first request's do."""
        return False

    def shape(
        self,
        plan: Any,
        result: EngineResult,
        text: TextAssembler,
        chosen: int,
        requests: list[Request],
        results: list[EngineResult | None],
    ) -> BaseModel:
        raise NotImplementedError

    def execute(self, job: ClaimedJob, runtime: WorkerRuntime, watch: JobWatch) -> Outcome:
        """Run the job on its model, which is held for it (not evicted) until it ends; a model or adapter
        loaded on demand loads here, under the job's lease."""
        try:
            with _model_in_use(job, runtime, watch) as (loaded, adapter, canvas_webhooks):
                return self._run(job, runtime, watch, loaded, adapter, canvas_webhooks)
        except Interrupted:  # stopped while waiting for memory to load its model
            return Outcome(stopped=True)

    def _run(
        self,
        job: ClaimedJob,
        runtime: WorkerRuntime,
        watch: JobWatch,
        loaded: LoadedModel,
        adapter: str | None,
        canvas_webhooks: bool,
    ) -> Outcome:
        settings = runtime.settings
        plan = self.plan_model.model_validate(job.plan)
        params = GenerationParams.model_validate(job.params)
        text = TextAssembler(loaded.decode, self.stops(params), loaded.token_text)
        request = Request(
            job.id,
            tuple(job.input_ids),
            sampling_params(params),
            loaded.eos_ids,
            stop_within=text.stop_within(),
            draft_interval=settings.draft_interval_seconds,
            adapter=adapter,
        )
        requests = self.prepare(plan, request, loaded)
        callbacks: list[EventCallback | None] = [None] * len(requests)
        if runtime.events is not None:
            sink = _canvas_webhook_sink(settings.database_url, job.id) if canvas_webhooks else None
            if self.streams_every_request(plan):
                callbacks = [
                    indexed(runtime.events.engine_callback(job.id, replace_text(text), sink if i == 0 else None), i)
                    for i in range(len(requests))
                ]
            else:
                on_event = runtime.events.engine_callback(job.id, text, sink)
                callbacks = [tagged(on_event, i, len(requests)) for i in range(len(requests))]
        chosen, result, results = wait_for_answer(
            loaded, requests, watch, callbacks, lambda r: self.decide(plan, r, loaded)
        )
        if runtime.events is not None:
            runtime.events.flush()  # canvas events (and their webhooks) before the final status
        if result.finish_reason == FinishReason.CANCELED.value:
            return Outcome(stopped=True)
        shaped = self.shape(plan, result, text, chosen, requests, results)
        if result.tokens_per_forward:
            TOKENS_PER_FORWARD.observe(result.tokens_per_forward)
        stats = answer_stats(job, self.answered(plan, result, results))
        return Outcome(output=shaped.model_dump(by_alias=True, exclude_none=True), stats=stats)


def answer_stats(job: ClaimedJob, answered: list[EngineResult]) -> dict[str, Any]:
    """The job's statistics over the requests it answers with (one, or every choice)."""
    timing = run_stats(job)
    steps = sum(r.denoising_steps for r in answered)
    tokens = sum(len(r.token_ids) for r in answered)
    return {
        "queue_ms": timing["queue_ms"],
        "run_ms": timing["run_ms"],
        "denoising_steps": steps,
        "canvases": sum(r.canvases for r in answered),
        "tokens_per_forward": round(tokens / steps, 4) if steps else 0.0,
        "prompt_tokens": answered[0].prompt_tokens,
        "output_tokens": tokens,
        "attempt": job.attempt,
    }


def replace_text(text: TextAssembler) -> TextAssembler:
    """A fresh assembler like `text` (same decoding and stops), for another choice's stream."""
    return TextAssembler(text.decode, text.stops, text.token_text)


@contextmanager
def _model_in_use(
    job: ClaimedJob, runtime: WorkerRuntime, watch: JobWatch
) -> Iterator[tuple[LoadedModel, str | None, bool]]:
    """(the loaded base model, the adapter to run with or None, whether canvas webhooks are wanted), held
    for the job while the block runs. An adapter runs on its base model's engine; a full fine-tune is loaded
    on first use next to its base. A load error raises the catalog's code for it at once."""
    assert runtime.host is not None, "a generation job needs a serving worker's model host"
    settings = runtime.settings
    with session_scope(settings.database_url) as session:
        record = session.get(ModelRecord, job.model)
        adapter = (record.name, record.adapter_path) if record is not None and record.adapter_path else None
        full = (
            (record.path, list(record.eos_token_ids), record.weight_bytes)
            if record and record.base_model and not adapter
            else None
        )
        model_name = record.base_model if adapter is not None and record is not None else job.model
        canvas_webhooks = wants_canvas_events(session, job.id)
    with runtime.host.using(
        model_name,
        full=full,
        adapter=adapter,
        should_stop=watch.should_stop,
        max_rows=settings.engine_max_rows,
        memory_bytes=settings.engine_memory_bytes,
        max_context=settings.engine_max_context,
        cuda_graphs=settings.engine_cuda_graphs,
    ) as loaded:
        if loaded is None:
            raise JobError(JobErrorCode.MODEL_NOT_LOADED, f"model {model_name!r} is not loaded here")
        yield loaded, adapter[0] if adapter else None, canvas_webhooks


def _canvas_webhook_sink(database_url: str, job_id: str) -> Callable[[dict[str, Any]], None]:
    def record(data: dict[str, Any]) -> None:
        with session_scope(database_url) as session:
            record_canvas_event(session, job_id, {k: data[k] for k in ("canvas", "text", "token_ids") if k in data})

    return record


def indexed(on_event: EventCallback, index: int) -> EventCallback:
    """Request `index`'s callback when every request is a choice: its events carry the choice's `index`."""

    def callback(request_id: str, kind: str, data: dict[str, Any]) -> None:
        on_event(request_id, kind, {**data, "index": index})

    return callback


def tagged(on_event: EventCallback | None, index: int, count: int) -> EventCallback | None:
    """Request `index`'s event callback: with several requests (tries), every one's drafts stream, each
    marked with its `try`; only the first one's committed canvases do (their deltas add up to one text)."""
    if on_event is None or count == 1:
        return on_event if index == 0 else None

    def callback(request_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "draft":
            on_event(request_id, kind, {**data, "try": index})
        elif index == 0:
            on_event(request_id, kind, data)

    return callback


def wait_for_answer(
    loaded: LoadedModel,
    requests: list[Request],
    watch: JobWatch,
    callbacks: list[EventCallback | None],
    decide: Callable[[list[EngineResult | None]], Decision],
) -> tuple[int, EngineResult, list[EngineResult | None]]:
    """Submit every request (each with its event callback) and wait until `decide` picks one; those still
    running then are canceled (also when one fails: its error fails the job). When the job must stop, every
    request is canceled, and unless a real answer was already there, the result says `canceled` (so a
    timeout stays a timeout). Returns (chosen, its result, every request's result or None)."""
    engine = loaded.engine
    handles = [engine.submit(r, on_event=callback) for r, callback in zip(requests, callbacks, strict=True)]
    asked = False
    try:
        while True:
            if not asked and watch.should_stop():
                for request in requests:
                    engine.cancel(request.request_id)
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
                engine.cancel(request.request_id)
    chosen, real = decided
    if asked and not real:
        stopped = next((r for r in results if r is not None and r.finish_reason == FinishReason.CANCELED.value), None)
        return chosen, stopped or results[chosen], results  # type: ignore[return-value]
    return chosen, results[chosen], results  # type: ignore[return-value]


def try_seeds(seed: int, tries: int) -> list[int]:
    """The seeds of a job's tries or choices: its recorded seed, then the next ones (try i uses seed + i)."""
    return [(seed + i) % 2**63 for i in range(tries)]


def with_seeds(request: Request, seeds: list[int]) -> list[Request]:
    """The request, and copies of it with the other seeds (request ids `<id>/try<i>`)."""
    return [request] + [
        replace(request, request_id=f"{request.request_id}/try{i}", params=replace(request.params, seed=seed))
        for i, seed in enumerate(seeds[1:], start=1)
    ]
