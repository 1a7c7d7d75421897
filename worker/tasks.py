"""Running a generation job: claim the row, generate, record the outcome. Thin over shared/ and host."""

from __future__ import annotations

import logging
from typing import Any

from shared.db import session_scope
from shared.jobs import claim, get_job, transition
from shared.models import utcnow
from shared.settings import Settings
from shared.states import FinishReason, JobStatus
from worker.generation import GenerationCanceled, GenerationResult, generate_one
from worker.host import ModelHost
from worker.job_watch import JobWatch

log = logging.getLogger(__name__)


def run_generation_job(settings: Settings, host: ModelHost, job_id: str) -> str:
    """Run one delivery of a job. Returns what happened (for logs): a duplicate delivery does nothing."""
    with session_scope(settings.database_url) as session:
        attempt = claim(session, job_id, host.hostname, settings.lease_seconds)
        if attempt is None:
            log.info("job %s is not queued (duplicate or canceled delivery): skipped", job_id)
            return "skipped"
        job = get_job(session, job_id)
        model_name, input_ids, params = job.model, list(job.input_ids), dict(job.params)
        queued_at, started_at = job.created_at, job.started_at
    loaded = host.get(model_name)
    if loaded is None:
        _finish(
            settings,
            job_id,
            attempt,
            JobStatus.FAILED,
            error={"type": "model_not_loaded", "message": f"model {model_name!r} is not loaded here"},
        )
        return "failed"
    watch = JobWatch(settings, job_id, attempt)
    watch.start()
    try:
        with host.lock:
            result = generate_one(loaded.model, input_ids, params, loaded.eos_ids, watch.should_stop)
    except GenerationCanceled:
        return _record_stop(settings, job_id, attempt, watch)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _finish(
            settings, job_id, attempt, JobStatus.FAILED, error={"type": type(exc).__name__, "message": str(exc)[:2000]}
        )
        return "failed"
    finally:
        watch.stop()
    output = {
        "text": loaded.tokenizer.decode(result.token_ids, skip_special_tokens=True),
        "token_ids": result.token_ids,
        "finish_reason": result.finish_reason,
    }
    stats = _stats(result, queued_at, started_at, len(input_ids), attempt)
    if _finish(settings, job_id, attempt, JobStatus.SUCCEEDED, output=output, stats=stats):
        return "succeeded"
    # Canceled after the last step: keep what was made, but honour the cancel.
    _finish(
        settings,
        job_id,
        attempt,
        JobStatus.CANCELED,
        stats=stats,
        output={**output, "finish_reason": FinishReason.CANCELED.value},
    )
    return "canceled"


def _record_stop(settings: Settings, job_id: str, attempt: int, watch: JobWatch) -> str:
    """Record why generation stopped early: lease lost (nothing to write), timeout, or cancel."""
    if watch.lease_lost.is_set():
        return "lease lost"
    if watch.timed_out and not watch.cancel_requested.is_set():
        limit = settings.max_job_seconds
        _finish(
            settings,
            job_id,
            attempt,
            JobStatus.FAILED,
            error={"type": "timeout", "message": f"the job ran longer than {limit} s"},
        )
        return "timed out"
    output = {"text": "", "token_ids": [], "finish_reason": FinishReason.CANCELED.value}
    _finish(settings, job_id, attempt, JobStatus.CANCELED, output=output)
    return "canceled"


def _stats(result: GenerationResult, queued_at: Any, started_at: Any, prompt_tokens: int, attempt: int) -> dict:
    finished = utcnow()
    return {
        "queue_ms": round((started_at - queued_at).total_seconds() * 1000, 1),
        "run_ms": round((finished - started_at).total_seconds() * 1000, 1),
        "denoising_steps": result.denoising_steps,
        "canvases": result.canvases,
        "tokens_per_forward": result.tokens_per_forward,
        "prompt_tokens": prompt_tokens,
        "output_tokens": len(result.token_ids),
        "attempt": attempt,
    }


def _finish(settings: Settings, job_id: str, attempt: int, to: JobStatus, **values: Any) -> bool:
    with session_scope(settings.database_url) as session:
        return transition(session, job_id, to, attempt=attempt, finished_at=utcnow(), lease_expires_at=None, **values)
