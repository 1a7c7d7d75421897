"""Prompt tokenization in the API, with the `tokenizers` library and Jinja (no transformers, no torch).

It reads the model directory's tokenizer.json and chat template; it knows nothing of the weights.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from shared.errors import InvalidRequest


class ModelTokenizer:
    """Encodes prompts and renders chat messages for one model directory."""

    def __init__(self, directory: Path) -> None:
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
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

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        if self.chat_template is None:
            raise InvalidRequest("this model has no chat template; send 'prompt' or 'input_ids'", "messages")
        try:
            text = self.chat_template.render(
                messages=messages, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except TemplateError as exc:
            raise InvalidRequest(f"the chat template could not render these messages: {exc}", "messages") from None
        # Templates write the BOS themselves, so the post-processor must not add a second one.
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _token_text(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


@lru_cache(maxsize=32)
def tokenizer_for(directory: str) -> ModelTokenizer:
    return ModelTokenizer(Path(directory))
