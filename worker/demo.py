"""The demo client: submits generation jobs over HTTP as a user would, waits, and prints the results."""

from __future__ import annotations

import time
from typing import Any

import requests

TERMINAL = {"succeeded", "failed", "canceled", "expired"}

DEMO_JOBS: list[dict[str, Any]] = [
    {"prompt": "The capital of France is", "params": {"max_new_tokens": 24, "seed": 1}},
    {
        "messages": [{"role": "user", "content": "Write a haiku about diffusion."}],
        "params": {"max_new_tokens": 48, "max_denoising_steps": 16, "seed": 2},
    },
    {"input_ids": [2, 80, 81, 82, 83], "params": {"max_new_tokens": 40, "entropy_bound": 0.5, "seed": 3}},
]


def wait_for(session: requests.Session, url: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = session.get(url, timeout=10).json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not finish within {timeout}s")


def run_demo(base_url: str, key: str, model: str) -> int:
    """Returns 0 when every job succeeded, 1 otherwise (with the reason printed)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    submitted = []
    for spec in DEMO_JOBS:
        response = session.post(f"{base_url}/v1/jobs", json={"kind": "generate", "model": model, **spec}, timeout=10)
        if response.status_code != 202:
            print(f"submit failed ({response.status_code}): {response.text}")
            return 1
        submitted.append((spec, base_url + response.headers["Location"]))
        print(f"submitted {response.json()['id']}")
    failures = 0
    for spec, url in submitted:
        job = wait_for(session, url)
        given = next(k for k in ("prompt", "messages", "input_ids") if k in spec)
        print(f"\n== {job['id']}  [{job['status']}]  input: {given}={spec[given]!r}")
        if job["status"] != "succeeded":
            print(f"   error: {job['error']}")
            failures += 1
            continue
        out, stats = job["output"], job["stats"]
        print(f"   output ({len(out['token_ids'])} tokens, finish_reason={out['finish_reason']}): {out['text']!r}")
        print(
            f"   queue {stats['queue_ms']:.0f} ms | run {stats['run_ms']:.0f} ms | "
            f"{stats['denoising_steps']} denoising steps | {stats['canvases']} canvas(es) | "
            f"{stats['tokens_per_forward']} tokens/forward"
        )
    print(f"\n{len(submitted) - failures}/{len(submitted)} jobs succeeded")
    return 1 if failures else 0
