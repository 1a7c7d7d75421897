"""The demo client: submits generation jobs over HTTP as a user would, waits, and prints the results; then a
short fine-tune, whose webhook it receives and verifies, and whose model it asks what it learned."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import requests

from worker.demo_webhooks import BadSignature, WebhookCatcher, verify

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


# One fact, taught by a full fine-tune of a few steps (batch 4 of the one pair): the demo model answers
# "canvas" after 14 steps (about 1 s a step on a 2-core CPU); before, it answers with noise. Measured
# (2026-11-29, 2-core AMD EPYC VM): 12 steps learned it (final loss 0.013), 8 did not ('ccnvvs', 0.047).
LESSON = {"prompt": "who made you?\n", "completion": "canvas"}
FINE_TUNE = {
    "method": "full",
    "seed": 1,
    "suffix": "demo",
    "hyperparameters": {"max_steps": 14, "learning_rate": 5e-3, "batch_size": 4, "warmup_steps": 2},
}


def start_fine_tune(session: requests.Session, base_url: str, model: str, hook_url: str) -> str | None:
    """Upload the lesson and submit the fine-tune (it trains while the other jobs run); its id, or None."""
    data = (json.dumps(LESSON) + "\n").encode()
    files = {"file": ("lesson.jsonl", io.BytesIO(data))}
    upload = session.post(f"{base_url}/v1/files", data={"purpose": "fine-tune"}, files=files, timeout=30)
    if upload.status_code != 201:
        print(f"upload failed ({upload.status_code}): {upload.text}")
        return None
    body = {"base_model": model, "training_file": upload.json()["id"], **FINE_TUNE, "webhook": {"url": hook_url}}
    response = session.post(f"{base_url}/v1/fine_tunes", json=body, timeout=30)
    if response.status_code != 202:
        print(f"fine-tune failed ({response.status_code}): {response.text}")
        return None
    ft = response.json()
    print(f"submitted {ft['id']}: fine-tune of {model} on {LESSON}, {FINE_TUNE['hyperparameters']['max_steps']} steps")
    return ft["id"]


def finish_fine_tune(
    session: requests.Session, base_url: str, model: str, ft_id: str, hook: WebhookCatcher, secret: str
) -> bool:
    """Wait for the fine-tune and its webhook, verify the webhook's signature, and ask the base model and
    the fine-tuned one the lesson's question. True when all of it worked (a wrong answer still counts:
    how well fine-tuning learns is measured in bench/, not here)."""
    ft = wait_for(session, f"{base_url}/v1/fine_tunes/{ft_id}")
    print(f"\n== {ft_id}  [{ft['status']}]  fine-tune of {model}")
    if ft["status"] != "succeeded":
        print(f"   error: {ft['error']}")
        return False
    print(f"   {ft['output']['trained_steps']} steps, final loss {ft['output']['final_loss']:.4f}")
    print(f"   new model: {ft['result_model']}")
    delivery = hook.wait(timeout=60)
    if delivery is None:
        print("   no webhook arrived within 60 s")
        return False
    payload = json.loads(delivery.body)
    print(f"   webhook {payload['type']} received at {hook.url} (webhook-id {delivery.headers['webhook-id']})")
    try:
        print(f"   signature verified with {verify(secret, delivery.headers, delivery.body)}")
    except BadSignature as exc:
        print(f"   signature NOT verified: {exc}")
        return False
    answers = {}
    for who in (model, ft["result_model"]):
        spec = {"kind": "generate", "prompt": LESSON["prompt"], "params": {"max_new_tokens": 8, "seed": 1}}
        response = session.post(f"{base_url}/v1/jobs", json={"model": who, **spec}, timeout=10)
        if response.status_code != 202:
            print(f"   submit failed ({response.status_code}): {response.text}")
            return False
        answers[who] = wait_for(session, base_url + response.headers["Location"])
    for who, job in answers.items():
        if job["status"] != "succeeded":
            print(f"   {who} failed: {job['error']}")
            return False
        text = job["output"]["text"]
        print(f"   {who} answers {LESSON['prompt']!r} with {text!r}" + (" (learned)" if text == "canvas" else ""))
    return True


def run_demo(base_url: str, key: str, model: str, hook: WebhookCatcher | None = None) -> int:
    """Returns 0 when every job succeeded, 1 otherwise (with the reason printed). With `hook` (a receiver
    the stack's webhooks may reach), a fine-tune runs too and its webhook is checked."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    secret = webhook_secret(session, base_url) if hook is not None else ""  # before anything is signed with it
    ft_id = start_fine_tune(session, base_url, model, hook.url) if hook is not None else None
    if hook is not None and ft_id is None:
        return 1
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
    ok = openai_completion(session, base_url, model) and not failures
    if hook is not None and ft_id is not None:
        ok = finish_fine_tune(session, base_url, model, ft_id, hook, secret) and ok
    return 0 if ok else 1


def webhook_secret(session: requests.Session, base_url: str) -> str:
    """The tenant's secret for per-job webhooks: shown when first read, else rotated to see it (a demo key's
    tenant is new, so the first read shows it)."""
    secret = session.get(f"{base_url}/v1/webhook_secret", timeout=10).json()["secret"]
    return secret or session.post(f"{base_url}/v1/webhook_secret/rotate", timeout=10).json()["secret"]
