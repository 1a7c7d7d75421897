"""The demo client: submits generation jobs over HTTP as a user would, waits, and prints the results."""

from __future__ import annotations

import json
import time
from typing import Any

import requests

TERMINAL = {"succeeded", "failed", "canceled", "expired"}

PUZZLE = "..3.2.6..9..3.5..1..18.64....81.29..7.......8..67.82....26.95..8..2.3..9..5.1.3.."

DEMO_JOBS: list[dict[str, Any]] = [
    # 32 givens (medium); the Sudoku sampling defaults; eight seeds side by side, the first valid grid answers
    {"kind": "sudoku", "grid": PUZZLE, "tries": 8, "params": {"seed": 1}},
    {"kind": "infill", "template": "the <|hole:5|> says moo.", "params": {"seed": 2}},
    {"kind": "generate", "prompt": "reverse: canvas\n", "params": {"max_new_tokens": 8, "seed": 3}},
    {"kind": "generate", "prompt": "add: 476+389\n", "params": {"max_new_tokens": 8, "seed": 4}},
]
EXPECTED = {"reverse: canvas\n": "savnac", "add: 476+389\n": "865"}


def show_drafts(session: requests.Session, url: str, most: int = 4) -> None:
    """Follow the job's event stream and print a few Sudoku drafts as they settle."""
    shown = 0
    with session.get(url + "/events", stream=True, timeout=300) as stream:
        event = ""
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "draft" and shown < most:
                draft = json.loads(line[6:])
                print(f"   draft of try {draft.get('try', 0) + 1} at step {draft['step']}: {draft['text'][:81]}")
                shown += 1
            elif event == "done":
                return


def describe(spec: dict[str, Any]) -> str:
    given = next(k for k in ("grid", "template", "prompt") if k in spec)
    return f"{spec['kind']} {given}={spec[given]!r}"


def wait_for(session: requests.Session, url: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = session.get(url, timeout=10).json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not finish within {timeout}s")


def openai_completion(session: requests.Session, base_url: str, model: str) -> bool:
    """The OpenAI-compatible endpoint, as an OpenAI client calls it: one more job, answered in OpenAI's shape."""
    body = {"model": model, "prompt": "add: 21+34\n", "max_tokens": 8, "seed": 5}
    print(f"\n== POST /v1/completions {json.dumps(body)}")
    response = session.post(f"{base_url}/v1/completions", json=body, timeout=300)
    if response.status_code != 200:
        print(f"   failed ({response.status_code}): {response.text}")
        return False
    answer = response.json()
    choice, usage = answer["choices"][0], answer["usage"]
    print(
        f"   {answer['object']} {answer['id']}: {choice['text']!r} (finish_reason={choice['finish_reason']}, "
        f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens; right answer: '55')"
    )
    return True


def run_demo(base_url: str, key: str, model: str) -> int:
    """Returns 0 when every job succeeded, 1 otherwise (with the reason printed)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    submitted = []
    for spec in DEMO_JOBS:
        response = session.post(f"{base_url}/v1/jobs", json={"model": model, **spec}, timeout=10)
        if response.status_code != 202:
            print(f"submit failed ({response.status_code}): {response.text}")
            return 1
        submitted.append((spec, base_url + response.headers["Location"]))
        print(f"submitted {response.json()['id']}: {describe(spec)}")
        if spec["kind"] == "sudoku":
            show_drafts(session, submitted[-1][1])
    failures = 0
    for spec, url in submitted:
        job = wait_for(session, url)
        print(f"\n== {job['id']}  [{job['status']}]  {describe(spec)}")
        if job["status"] != "succeeded":
            print(f"   error: {job['error']}")
            failures += 1
            continue
        out, stats = job["output"], job["stats"]
        print(f"   output ({len(out['token_ids'])} tokens, finish_reason={out['finish_reason']}): {out['text']!r}")
        if spec["kind"] == "sudoku":
            print(f"   solved grid: {out['grid']}  valid solution: {out['valid']}")
            print(f"   answered by try {out['try'] + 1} of {out['tries']} (seed {out['seed']})")
        elif spec.get("prompt") in EXPECTED:
            expected = EXPECTED[spec["prompt"]]
            print(f"   right answer: {expected!r} -> {'right' if out['text'] == expected else 'wrong'}")
        print(
            f"   queue {stats['queue_ms']:.0f} ms | run {stats['run_ms']:.0f} ms | "
            f"{stats['denoising_steps']} denoising steps | {stats['canvases']} canvas(es) | "
            f"{stats['tokens_per_forward']} tokens/forward"
        )
    print(f"\n{len(submitted) - failures}/{len(submitted)} jobs succeeded")
    return 0 if openai_completion(session, base_url, model) and not failures else 1
