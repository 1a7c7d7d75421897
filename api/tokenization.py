"""Prompt tokenization in the API, with the `tokenizers` library and Jinja (no transformers, no torch).

It reads the model directory's tokenizer.json and chat template; it knows nothing of the weights.

User text is always tokenized as text: a prompt or a message that contains "<eos>" or "<start_of_turn>"
gets the ids of those characters, never the control token (the `tokenizers` option
`encode_special_tokens`, transformers' `split_special_tokens`). Only what the chat template itself writes
around the messages becomes control tokens: messages are rendered with unguessable placeholders for
their text, and the rendered text is tokenized piece by piece.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from shared.chat_placeholders import PlacedMessages
from shared.errors import InvalidRequest, Unavailable


class ModelTokenizer:
    """Encodes prompts and renders chat messages for one model directory. `tokenizer` encodes text as text
    (special-token strings included); `_control` is for the chat template's own markup only."""

    def __init__(self, directory: Path) -> None:
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.encode_special_tokens = True  # "<eos>" in user text is five characters, not EOS
        self._control = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "tokenizer_config.json")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        template = config.get("chat_template")
        template_file = directory / "chat_template.jinja"
        if template is None and template_file.exists():
            template = template_file.read_text()
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.chat_template = env.from_string(template) if isinstance(template, str) else None

    def encode(self, text: str) -> list[int]:
        """Text to ids, with the model's special tokens (BOS) as its post-processor adds them."""
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        """Ids to text as the worker decodes a completion: special tokens (BOS, EOS) left out."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """The messages rendered with the chat template: its markup as control tokens, their text as text."""
        if self.chat_template is None:
            raise InvalidRequest("this model has no chat template; send 'prompt' or 'input_ids'", "messages")
        placed = PlacedMessages(messages)
        try:
            rendered = self.chat_template.render(
                messages=placed.messages, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except TemplateError as exc:
            raise InvalidRequest(f"the chat template could not render these messages: {exc}", "messages") from None
        # Templates write the BOS themselves, so the post-processor must not add a second one.
        ids: list[int] = []
        for piece, is_text in placed.pieces(rendered):
            ids += (self.tokenizer if is_text else self._control).encode(piece, add_special_tokens=False).ids
        return ids


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _token_text(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


def tokenizer_for(directory: str) -> ModelTokenizer:
    """The tokenizer of a registered model's directory, cached once read. A directory whose tokenizer files
    are gone or unreadable is Unavailable (503, naming the directory), and is read again on the next
    request, so a repaired model serves at once."""
    try:
        return _cached_tokenizer(directory)
    except Exception as exc:  # `tokenizers` raises plain Exception; any failure here is the files'
        raise Unavailable(
            f"this model cannot be served: its tokenizer in {directory} cannot be read ({exc})", "model"
        ) from None


@lru_cache(maxsize=32)
def _cached_tokenizer(directory: str) -> ModelTokenizer:
    return ModelTokenizer(Path(directory))
