"""OpenAI's response shapes for a generation job: the one owner of how a finished job reads as a completion
or chat completion (the OpenAI routes answer with it; the Batch API writes it into output files): its
choices (one, or `n`; `n` per prompt for a completion with several prompts, one job each), their
log-probabilities, an infill job's fill, the prompt a completion with `echo` begins each choice with, usage.

Knows job views (the dicts of shared/views.py), not Flask, the database or how the job ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass(frozen=True)
class Shape:
    """How one request's answer is written: a text completion or a chat completion, with `choices` choices;
    `infill`: the job fills a hole before a suffix (its canvases hold the suffix too, so they are not relayed)."""

    chat: bool
    job_id: str
    model: str
    created: int
    choices: int = 1
    infill: bool = False

    def envelope(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {"id": prefix + self.job_id, "object": kind, "created": self.created, "model": self.model}

    def choice(
        self,
        text: str | None,
        finish: str | None,
        chunk: bool,
        index: int = 0,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if not self.chat:
            lp = completion_logprobs(logprobs)
            return {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        lp = chat_logprobs(logprobs)
        if chunk:
            delta = {"content": text} if text else {}
            return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        message = {"role": "assistant", "content": text or ""}
        return {"index": index, "message": message, "logprobs": lp, "finish_reason": finish}


@dataclass(frozen=True)
class Answer:
    """One choice of a finished job: its text, ids, OpenAI finish_reason and log-probabilities (or None)."""

    text: str
    token_ids: list[int]
    finish: str
    logprobs: list[dict[str, Any]] | None


def answers(output: dict[str, Any], infill: bool = False) -> list[Answer]:
    """The choices of a finished job's output (the worker cut each at its first stop string); an infill
    job's one answer is its fill."""
    if infill:
        fill = output["fills"][0]
        return [Answer(fill["text"], fill["token_ids"], FINISH.get(output["finish_reason"], "stop"), None)]
    choices = output.get("choices") or [output]
    return [
        Answer(c["text"], c.get("token_ids", []), FINISH.get(c["finish_reason"], "stop"), c.get("logprobs"))
        for c in choices
    ]


def echoed(job_input: dict[str, Any] | None) -> str:
    """The text each choice of a /v1/completions answer with `echo` begins with, from the job's recorded
    input: the prompt (token ids decoded by the API); "" without `echo`. Stop strings never cut it: the
    worker cut the completion alone."""
    return (job_input or {}).get("echo") or ""


def final_text(output: dict[str, Any]) -> tuple[str, str]:
    """(text, OpenAI finish_reason) of a finished job's first choice."""
    first = answers(output)[0]
    return first.text, first.finish


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """OpenAI's chat `logprobs` ({"content": [...]}) from the output's per-token entries."""
    if entries is None:
        return None

    def token(entry: dict[str, Any]) -> dict[str, Any]:
        return {"token": entry["token"], "logprob": entry["logprob"], "bytes": list(entry["token"].encode())}

    return {"content": [{**token(e), "top_logprobs": [token(t) for t in e["top"]]} for e in entries], "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """OpenAI's legacy completion `logprobs` (tokens, token_logprobs, top_logprobs, text_offset); each
    top_logprobs entry holds the returned token too, as OpenAI's does."""
    if entries is None:
        return None
    offsets, at = [], 0
    for entry in entries:
        offsets.append(at)
        at += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{**{t["token"]: t["logprob"] for t in e["top"]}, e["token"]: e["logprob"]} for e in entries],
        "text_offset": offsets,
    }


def usage(job: dict[str, Any], choices: list[Answer] | None = None) -> dict[str, int]:
    """Prompt tokens as the worker counted them; completion tokens of every choice (by default the job's)."""
    prompt = (job.get("stats") or {}).get("prompt_tokens", 0)
    if choices is None:
        choices = answers(job["output"], job.get("kind") == "infill")
    completion = sum(len(a.token_ids) for a in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(shape: Shape, *jobs: dict[str, Any]) -> dict[str, Any]:
    """The whole non-streamed answer for succeeded jobs' views: one job per prompt, in the prompts' order
    (usually one); choice `index` is prompt_index * n + choice_index, as OpenAI numbers them; with `echo`
    each choice's text begins with its job's prompt; usage summed (the prompt counts as prompt tokens only)."""
    choices: list[dict[str, Any]] = []
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for p, job in enumerate(jobs):
        mine = answers(job["output"], shape.infill or job.get("kind") == "infill")
        first, prompt = p * shape.choices, echoed(job.get("input"))
        choices += [shape.choice(prompt + a.text, a.finish, False, first + i, a.logprobs) for i, a in enumerate(mine)]
        for name, count in usage(job, mine).items():
            total[name] += count
    return {**shape.envelope(chunk=False), "choices": choices, "usage": total}


def job_error(job: dict[str, Any]) -> tuple[str, str]:
    """(type, message) naming a job that did not succeed, and why (the view may lack its id: see follow_job)."""
    error = job.get("error") or {}
    name = " ".join(str(part) for part in ("job", job.get("id"), job["status"]) if part)
    return error.get("type") or f"job_{job['status']}", name + (f": {error['message']}" if error.get("message") else "")


# The HTTP status an OpenAI route answers for a job that did not succeed (canceled 409, expired 504, else 500).
ERROR_STATUS = {"canceled": 409, "expired": 504}


def error_status(job: dict[str, Any]) -> int:
    return ERROR_STATUS.get(job["status"], 500)
