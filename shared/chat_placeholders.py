"""Chat messages rendered with placeholders for their text, so that a tokenizer can tell the chat
template's own markup (control tokens) from the users' text (tokenized as text, "<eos>" as its characters).

Shared by the API (prompts) and fine-tuning (training examples), so both tokenize a conversation alike.
Knows no tokenizer and no template engine: callers render and encode.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

PLACEHOLDER = "\ue000{nonce}:{i}\ue001"  # private-use characters around a per-call nonce: no user can write it


class PlacedMessages:
    """`messages` with each text field (all but `role`) replaced by a placeholder, and how to split a text
    rendered from them back into markup and the original texts."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self._nonce = secrets.token_hex(8)
        self._texts: dict[str, str] = {}
        self.messages = [self._place(message) for message in messages]

    def _place(self, message: dict[str, Any]) -> dict[str, Any]:
        out = dict(message)
        for field, value in message.items():
            if field != "role" and isinstance(value, str):
                placeholder = PLACEHOLDER.format(nonce=self._nonce, i=len(self._texts))
                self._texts[placeholder] = value
                out[field] = placeholder
        return out

    def pieces(self, rendered: str) -> Iterator[tuple[str, bool]]:
        """(piece, is user text) in order: the template's markup (False) and the messages' texts (True)."""
        pattern = f"({re.escape(PLACEHOLDER.format(nonce=self._nonce, i='@')).replace('@', '[0-9]+')})"
        for number, piece in enumerate(re.split(pattern, rendered)):
            if number % 2:
                yield self._texts[piece], True
            elif piece:
                yield piece, False
