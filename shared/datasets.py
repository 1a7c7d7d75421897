"""Fine-tuning datasets: JSONL of {"prompt", "completion"} or {"messages": [...]} (the last assistant turn
is supervised). Parsing reports the first bad lines with their numbers; nothing here needs torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_LINE_BYTES = 64_000
MAX_ERRORS = 5
ASSISTANT_ROLES = ("assistant", "model")
# The roles a served chat takes (system, user, assistant; Gemma's "model" is the assistant): any other text
# would be written into the template's turn markup, where it could forge control tokens in training.
ROLES = ("system", "user", *ASSISTANT_ROLES)


@dataclass(frozen=True)
class Record:
    """One example: either a prompt string or the chat messages before the supervised turn."""

    completion: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None


class DatasetError(ValueError):
    """The file is not a usable dataset; `problems` lists (line number, what is wrong)."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"line {n}: {p}" if n else p for n, p in problems))


def _record(obj: Any) -> Record | str:
    """A record, or what is wrong with the object."""
    if not isinstance(obj, dict):
        return "each line must be a JSON object"
    if "messages" in obj:
        extra = set(obj) - {"messages"}
        messages = obj["messages"]
        if extra:
            return f"unknown field {sorted(extra)[0]!r}"
        if not isinstance(messages, list) or len(messages) < 2:
            return "'messages' must be a list of at least two messages"
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return "each message needs a string 'role' and a string 'content'"
            if m["role"] not in ROLES:
                return f"role {m['role'][:40]!r} is not one of {', '.join(ROLES)}"
        if messages[-1]["role"] not in ASSISTANT_ROLES:
            return "the last message must be the assistant's (the supervised turn)"
        if not messages[-1]["content"]:
            return "the supervised assistant message is empty"
        history = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
        return Record(completion=messages[-1]["content"], messages=history)
    missing = [k for k in ("prompt", "completion") if k not in obj]
    if missing:
        return f"missing field {missing[0]!r} (expected 'prompt' and 'completion', or 'messages')"
    extra = set(obj) - {"prompt", "completion"}
    if extra:
        return f"unknown field {sorted(extra)[0]!r}"
    if not isinstance(obj["prompt"], str) or not isinstance(obj["completion"], str):
        return "'prompt' and 'completion' must be strings"
    if not obj["completion"]:
        return "'completion' is empty"
    return Record(completion=obj["completion"], prompt=obj["prompt"])


def parse_dataset(content: bytes, max_line_bytes: int = MAX_LINE_BYTES) -> list[Record]:
    """Every record of a JSONL file, or DatasetError with the first problems and their line numbers."""
    problems: list[tuple[int, str]] = []
    records: list[Record] = []
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(raw) > max_line_bytes:
            problems.append((number, f"the line has {len(raw)} bytes; the limit is {max_line_bytes}"))
        else:
            try:
                result = _record(json.loads(raw))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                result = f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
            if isinstance(result, str):
                problems.append((number, result))
            else:
                records.append(result)
        if len(problems) >= MAX_ERRORS:
            break
    if problems:
        raise DatasetError(problems)
    if not records:
        raise DatasetError([(0, "the file has no examples")])
    return records
