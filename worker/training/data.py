"""Dataset records to token ids, with the model's tokenizer (and chat template for messages), tokenized as
the API tokenizes prompts (api/tokenization.py): the records' text as text (a "<eos>" written in a dataset
is its five characters, never the control token), only the chat template's own markup as control tokens."""

from __future__ import annotations

from typing import Any

from shared.chat_placeholders import PlacedMessages
from shared.datasets import Record
from worker.training.objective import Example


def to_example(record: Record, tokenizer: Any) -> Example:
    if record.messages is not None:
        prompt = _chat_ids(list(record.messages), tokenizer)
    else:
        prompt = tokenizer(record.prompt or "", split_special_tokens=True).input_ids  # BOS as served
    completion = tokenizer(record.completion, add_special_tokens=False, split_special_tokens=True).input_ids
    return Example(prompt=list(prompt), response=list(completion))


def _chat_ids(messages: list[dict[str, Any]], tokenizer: Any) -> list[int]:
    """The messages rendered with the chat template (which writes the BOS itself): markup as control tokens."""
    placed = PlacedMessages(messages)
    rendered = tokenizer.apply_chat_template(placed.messages, add_generation_prompt=True, tokenize=False)
    ids: list[int] = []
    for piece, is_text in placed.pieces(rendered):
        ids += tokenizer(piece, add_special_tokens=False, split_special_tokens=is_text).input_ids
    return ids
