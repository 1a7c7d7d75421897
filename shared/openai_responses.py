"""OpenAI's response shapes for a generation job: the one owner of how a finished job reads as a completion
or chat completion (the OpenAI routes answer with it; the Batch API writes it into output files).

Knows job views (the dicts of shared/views.py), not Flask, the database or how the job ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass(frozen=True)
class Shape:
    """How one request's answer is written: a text completion or a chat completion."""

    chat: bool
    job_id: str
    model: str
    created: int

    def envelope(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {"id": prefix + self.job_id, "object": kind, "created": self.created, "model": self.model}

    def choice(self, text: str | None, finish: str | None, chunk: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = {"content": text} if text else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        message = {"role": "assistant", "content": text or ""}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}


def usage(job: dict[str, Any]) -> dict[str, int]:
    stats = job.get("stats") or {}
    prompt, completion = stats.get("prompt_tokens", 0), stats.get("output_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def final_text(output: dict[str, Any]) -> tuple[str, str]:
    """(text, OpenAI finish_reason) of a finished job's output: the worker cut it at the first stop string."""
    return output["text"], FINISH.get(output["finish_reason"], "stop")


def completion_body(shape: Shape, job: dict[str, Any]) -> dict[str, Any]:
    """The whole non-streamed answer for a succeeded job's view."""
    text, finish = final_text(job["output"])
    return {**shape.envelope(chunk=False), "choices": [shape.choice(text, finish, chunk=False)], "usage": usage(job)}


def job_error(job: dict[str, Any]) -> tuple[str, str]:
    """(type, message) naming a job that did not succeed, and why (the view may lack its id: see follow_job)."""
    error = job.get("error") or {}
    name = " ".join(str(part) for part in ("job", job.get("id"), job["status"]) if part)
    return error.get("type") or f"job_{job['status']}", name + (f": {error['message']}" if error.get("message") else "")


# The HTTP status an OpenAI route answers for a job that did not succeed (canceled 409, expired 504, else 500).
ERROR_STATUS = {"canceled": 409, "expired": 504}


def error_status(job: dict[str, Any]) -> int:
    return ERROR_STATUS.get(job["status"], 500)
