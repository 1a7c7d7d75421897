"""Dataset records to token ids, with the model's tokenizer (and chat template for messages)."""

from __future__ import annotations

from typing import Any

from shared.datasets import Record
from worker.training.objective import Example


def to_example(record: Record, tokenizer: Any) -> Example:
    if record.messages is not None:
        rendered = tokenizer.apply_chat_template(
            list(record.messages), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        prompt = list(rendered["input_ids"])
    else:
        prompt = tokenizer(record.prompt or "").input_ids
    completion = tokenizer(record.completion, add_special_tokens=False).input_ids
    return Example(prompt=list(prompt), response=list(completion))
