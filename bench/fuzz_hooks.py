"""schemathesis hooks for bench/fuzz.py (loaded through SCHEMATHESIS_HOOKS): make part of the generated
requests name the model that the stack serves, so they get past "model not found" into validation,
tokenization, the queue, the worker and back; and keep the jobs they make short (at most 32 new tokens,
8 denoising steps), so a run's jobs finish while it lasts and a completion never waits past its bound.
Webhook endpoints get a loopback URL (which the stacks allow), so their ids flow into the other
endpoint operations.

Every other request is left exactly as generated (unknown models included). Which requests are changed is
decided by a counter, so a seeded run stays reproducible.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import schemathesis

MODEL = os.environ.get("CANVAS_FUZZ_MODEL", "")
RECEIVER = "http://127.0.0.1:9/canvas-fuzz"  # nothing listens: deliveries fail and are retried, as they may
LIMITS = {"max_new_tokens": 32, "max_tokens": 32, "max_completion_tokens": 32, "max_denoising_steps": 8}
INPUTS = {"prompt", "input_ids", "messages", "template", "prefix", "suffix", "grid"}
_turns = itertools.count()


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    if not MODEL or not isinstance(body, dict) or next(_turns) % 2:
        return body
    body = {**body, **{name: MODEL for name in ("model", "base_model") if name in body}}
    path = context.operation.path if context.operation is not None else ""
    if path == "/v1/jobs":
        if not INPUTS & set(body):  # the schema cannot say "exactly one of prompt, input_ids, messages"
            body["prompt"] = "Once upon a time"
        params = body.get("params", {})
        if isinstance(params, dict):
            body["params"] = _bound({"max_new_tokens": 32, "max_denoising_steps": 8, **params})
    elif path.startswith("/v1/webhook_endpoints") and "url" in body:
        body["url"] = RECEIVER  # the SSRF guard lets loopback through in the fuzz stacks; the rest is refused
    elif path in ("/v1/completions", "/v1/chat/completions"):
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = LIMITS["max_tokens"]  # the default (256 tokens) would be long
        _bound(body)
        if isinstance(body.get("canvas"), dict):
            body["canvas"] = _bound(dict(body["canvas"]))
    return body


def _bound(fields: dict[str, Any]) -> dict[str, Any]:
    for name, limit in LIMITS.items():
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            fields[name] = limit
    return fields
