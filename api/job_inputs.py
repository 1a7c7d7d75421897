"""Turning a validated JobCreate into token ids, and checking them against the model's limits."""

from __future__ import annotations

import math
from typing import Any

from api.schemas import JobCreate
from api.tokenization import tokenizer_for
from shared.errors import InvalidRequest
from shared.models import ModelRecord


def prompt_ids(body: JobCreate, model: ModelRecord) -> tuple[list[int], dict[str, Any]]:
    """(input ids, the input as recorded on the job). Raises InvalidRequest naming the field."""
    given = body.given_inputs()
    if len(given) != 1:
        names = ", ".join(given) if given else "none"
        raise InvalidRequest(f"send exactly one of 'prompt', 'input_ids', 'messages' (got {names})", "prompt")
    if body.input_ids is not None:
        bad = next((i for i in body.input_ids if not 0 <= i < model.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is outside the vocabulary [0, {model.vocab_size})", "input_ids")
        return list(body.input_ids), {"input_ids": list(body.input_ids)}
    tokenizer = tokenizer_for(model.path)
    if body.messages is not None:
        messages = [m.model_dump() for m in body.messages]
        return tokenizer.encode_chat(messages), {"messages": messages}
    assert body.prompt is not None
    if not body.prompt:
        raise InvalidRequest("prompt must not be empty", "prompt")
    return tokenizer.encode(body.prompt), {"prompt": body.prompt}


def check_length(ids: list[int], max_new_tokens: int, model: ModelRecord, field: str) -> None:
    """The prompt plus the whole canvases needed for max_new_tokens must fit the model's positions."""
    canvases = math.ceil(max_new_tokens / model.canvas_length)
    needed = len(ids) + canvases * model.canvas_length
    if needed > model.max_positions:
        raise InvalidRequest(
            f"the prompt is {len(ids)} tokens; with max_new_tokens={max_new_tokens} ({canvases} canvas(es) of "
            f"{model.canvas_length}) it needs {needed} positions, and model {model.name!r} allows "
            f"{model.max_positions}",
            field,
        )
