"""Planning a `generate` job: exactly one of `prompt`, `input_ids`, `messages`, turned into prompt ids."""

from __future__ import annotations

from typing import Any

from api.schemas import CompletionJob, JobCreate
from api.tokenization import tokenizer_for
from shared.contracts import GenerationParams
from shared.errors import InvalidRequest
from shared.job_kinds.generate import GeneratePlan
from shared.models import ModelRecord

FIELDS = frozenset({"prompt", "input_ids", "messages", "n", "logprobs"})


def plan(body: JobCreate, model: ModelRecord) -> tuple[list[int], GeneratePlan, GenerationParams, str]:
    """(prompt ids, the input as given, the parameters, the field a too-long prompt is blamed on)."""
    given = body.given_inputs()
    if len(given) != 1:
        names = ", ".join(given) if given else "none"
        raise InvalidRequest(f"send exactly one of 'prompt', 'input_ids', 'messages' (got {names})", "prompt")
    if body.logprobs is not None and body.params.sampler == "fast":
        message = "logprobs need the exact sampler (the fast one never holds a step's whole distribution)"
        raise InvalidRequest(message, "logprobs")
    choices: dict[str, Any] = {"n": body.n, "logprobs": body.logprobs}
    if body.input_ids is not None:
        bad = next((i for i in body.input_ids if not 0 <= i < model.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is outside the vocabulary [0, {model.vocab_size})", "input_ids")
        if _echoes(body):
            choices["echo"] = tokenizer_for(model.path).decode(body.input_ids)
        ids, recorded = list(body.input_ids), GeneratePlan(input_ids=list(body.input_ids), **choices)
        return ids, recorded, body.params, given[0]
    tokenizer = tokenizer_for(model.path)
    if body.messages is not None:
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        return tokenizer.encode_chat(messages), GeneratePlan(messages=messages, **choices), body.params, given[0]
    assert body.prompt is not None
    if not body.prompt:
        raise InvalidRequest("prompt must not be empty", "prompt")
    if _echoes(body):
        choices["echo"] = body.prompt
    return tokenizer.encode(body.prompt), GeneratePlan(prompt=body.prompt, **choices), body.params, given[0]


def _echoes(body: JobCreate) -> bool:
    """Whether the OpenAI answer begins with the prompt (a /v1/completions request with `echo`)."""
    return isinstance(body, CompletionJob) and body.echo
